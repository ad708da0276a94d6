//! End-to-end check on the bundled toyworld pair: per-step progress
//! advantage (template rendering, token_agg sum, β = 1) of all 512 demo
//! trajectories equals the numbers transformers computed
//! (assets/toyworld/expected_steps_demo_*.jsonl), to 1e-4 in f32 (CPU and
//! GPU), and in bf16 (CPU and GPU) within what scripts/bf16_emulation.py
//! predicts for each step's action tokens.

mod common;
#[cfg(feature = "cuda")]
mod cuda_common;

use std::collections::HashMap;
use std::path::PathBuf;

use padv::apps::StepScore;
use padv::backend::{ComputeDtype, Device};
use padv::pipeline::{Scorer, ScorerOptions};
use padv::score::aggregate::TokenAgg;
use serde_json::Value;

use common::read_all;

/// The bundled pair; `CARGO_MANIFEST_DIR` at run time wins, so a test binary
/// built here runs from another checkout (scripts/gpu-check.sh carries them).
fn toyworld() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("assets/toyworld")
}

/// The keys of `expected_steps_demo_*.jsonl` and what padv reports for them.
type Key = (&'static str, fn(&StepScore) -> Option<f64>);
const KEYS: [Key; 3] = [
    ("steps", |st| st.advantage),
    ("logp_policy", |st| st.logp_policy),
    ("logp_reference", |st| st.logp_reference),
];

/// One step's |padv − transformers|.
struct Deviation {
    /// `id` step `k`.
    at: String,
    abs: f64,
    /// Action tokens the step sums.
    n_tokens: usize,
}

/// For each of [`KEYS`], every step's deviation over all 256 trajectories
/// of `demo_{set}.jsonl`.
fn deviations(set: &str, device: Device, compute_dtype: ComputeDtype) -> [Vec<Deviation>; 3] {
    let dir = toyworld();
    let opts = ScorerOptions {
        device,
        compute_dtype,
        token_agg: TokenAgg::Sum,
        ..ScorerOptions::default()
    };
    let mut scorer =
        Scorer::load(&dir.join("models/trained"), &dir.join("models/ref"), opts).unwrap();
    let records = read_all(&dir.join(format!("demo_{set}.jsonl")));
    let expected: HashMap<String, Value> =
        std::fs::read_to_string(dir.join(format!("expected_steps_demo_{set}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["id"].as_str().unwrap().to_string(), v)
            })
            .collect();
    let scored = scorer.score(&records);
    assert_eq!(scored.len(), 256);
    let mut out: [Vec<Deviation>; 3] = Default::default();
    for s in scored {
        let s = s.unwrap();
        let want = &expected[&s.record.id];
        for ((key, get), out) in KEYS.iter().zip(&mut out) {
            let w = want[key].as_array().unwrap();
            assert_eq!(w.len(), s.steps.len(), "{}: number of steps", s.record.id);
            for (k, (wv, st)) in w.iter().zip(&s.steps).enumerate() {
                out.push(Deviation {
                    at: format!("{} {key}[{k}]", s.record.id),
                    abs: (wv.as_f64().unwrap() - get(st).unwrap()).abs(),
                    n_tokens: st.n_tokens,
                });
            }
        }
    }
    out
}

fn mean<'a>(d: impl IntoIterator<Item = &'a Deviation>, f: fn(&Deviation) -> f64) -> f64 {
    let (sum, n) = d.into_iter().fold((0.0, 0), |(s, n), x| (s + f(x), n + 1));
    sum / f64::from(n.max(1))
}

/// f32 arithmetic: every step within 1e-4 of transformers.
fn check(set: &str, device: Device) {
    let d = deviations(set, device, ComputeDtype::Auto);
    let worst = d.iter().flatten().map(|x| x.abs).fold(0.0, f64::max);
    let avg = mean(d.iter().flatten(), |x| x.abs);
    eprintln!("demo_{set} on {device:?}: max |Δ| vs transformers = {worst:.2e}, mean {avg:.2e}");
    for x in d.iter().flatten() {
        let (at, n) = (&x.at, x.n_tokens);
        assert!(
            x.abs <= 1e-4,
            "demo_{set} {at} ({n} tokens): |Δ| {:e}",
            x.abs
        );
    }
    assert!(avg <= 1e-4, "demo_{set}: mean |Δ| {avg:.2e}");
}

#[test]
fn toyworld_ref_rollouts_match_transformers_step_by_step() {
    check("ref", Device::Cpu);
}

#[test]
fn toyworld_trained_rollouts_match_transformers_step_by_step() {
    check("trained", Device::Cpu);
}

// The same check through the CUDA backend (f32 checkpoints, so cuBLAS runs
// f32 GEMMs and the 1e-4 budget holds as on the CPU). `cuda_common::gpu`
// skips with the reason when CUDA is unusable, unless `PADV_REQUIRE_GPU` is set.
#[cfg(feature = "cuda")]
#[test]
fn toyworld_ref_rollouts_match_transformers_on_the_gpu() {
    if cuda_common::gpu().is_some() {
        check("ref", Device::Cuda(0));
    }
}

#[cfg(feature = "cuda")]
#[test]
fn toyworld_trained_rollouts_match_transformers_on_the_gpu() {
    if cuda_common::gpu().is_some() {
        check("trained", Device::Cuda(0));
    }
}

/// bf16 arithmetic: a token's |Δ| (difference / policy / reference
/// log-prob) from the emulation is at most `token_max` and on average
/// `token_mean` over demo_ref's 7474 action tokens. A step sums its action
/// tokens (2–3 here), so a step of n tokens is held to n·2.5·max, and the
/// mean over steps to 2.5·mean·(mean tokens per step). The roundings must
/// show: a mean below a tenth of the emulated one means the run was not in
/// bf16 (f32 lands near 1e-6, thousands of times lower).
fn check_bf16(device: Device, token_max: [f64; 3], token_mean: [f64; 3]) {
    const MARGIN: f64 = 2.5;
    let d = deviations("ref", device, ComputeDtype::Bf16);
    for (i, (key, _)) in KEYS.iter().enumerate() {
        for x in &d[i] {
            let bound = MARGIN * token_max[i] * x.n_tokens as f64;
            assert!(
                x.abs <= bound,
                "{} ({} tokens): |Δ| {} > {bound}",
                x.at,
                x.n_tokens,
                x.abs
            );
        }
        let avg = mean(&d[i], |x| x.abs);
        let worst = d[i].iter().map(|x| x.abs).fold(0.0, f64::max);
        let expected = token_mean[i] * mean(&d[i], |x| x.n_tokens as f64);
        eprintln!(
            "bf16 on {device:?} {key}: max |Δ| {worst:.2e}, mean {avg:.2e} per step, emulated ~{expected:.2e}"
        );
        assert!(avg <= MARGIN * expected, "{key}: mean |Δ| {avg:.2e}");
        assert!(
            avg >= expected / 10.0,
            "{key}: mean |Δ| {avg:.2e} is too small for bf16 arithmetic: was it used?"
        );
    }
}

/// The CPU's bf16 compute mode (`--compute-dtype bf16`): every weight GEMM's
/// inputs (LM head included) rounded to bf16, and attention's Q, K, V and
/// softmax numerators for P·V. `python3 scripts/bf16_emulation.py --cpu
/// assets/toyworld/models T` (T as below) emulates exactly these roundings:
/// over the 7474 action tokens a token's difference / policy / reference
/// log-prob moves by at most 0.1213 / 0.1160 / 0.0677 and on average
/// 0.00155 / 0.00110 / 0.00080 (padv measured per step 0.114 / 0.109 /
/// 0.068 max, 0.0040 / 0.0030 / 0.0020 mean; the emulation's step sums
/// 0.121 / 0.116 / 0.068, 0.0040 / 0.0030 / 0.0020).
#[test]
fn toyworld_ref_rollouts_in_bf16_on_the_cpu_stay_near_transformers() {
    check_bf16(
        Device::Cpu,
        [0.1213, 0.1160, 0.0677],
        [0.00155, 0.00110, 0.00080],
    );
}

/// The f32 toyworld pair run in bf16 on the GPU (`compute_dtype`): every
/// matrix, GEMM input and output, q after RoPE and the KV cache rounded
/// to bf16, and (head_dim 32) the tensor-core attention's Q and P. `python3
/// scripts/bf16_emulation.py assets/toyworld/models T`, with T = `padv score
/// --tokens` of demo_ref.jsonl, emulates exactly these roundings (with the
/// GEMM inputs alone it reproduced the H200's 0.060 max on the llama_bf16
/// fixture); over the 7474 action tokens it moves a token's log-prob
/// difference / policy / reference log-prob by at most 0.214 / 0.106 /
/// 0.116 and on average 0.00200 / 0.00150 / 0.00092.
#[cfg(feature = "cuda")]
#[test]
fn toyworld_ref_rollouts_in_bf16_on_the_gpu_stay_near_transformers() {
    if cuda_common::gpu().is_none() {
        return;
    }
    check_bf16(
        Device::Cuda(0),
        [0.214, 0.106, 0.116],
        [0.00200, 0.00150, 0.00092],
    );
}
