//! End-to-end check on the bundled toyworld pair: per-step progress
//! advantage (template rendering, token_agg sum, β = 1) of all 512 demo
//! trajectories equals the numbers transformers computed
//! (assets/toyworld/expected_steps_demo_*.jsonl), to 1e-4.

#[cfg(feature = "cuda")]
mod cuda_common;

use std::collections::HashMap;
use std::path::PathBuf;

use padv::backend::Device;
use padv::model::DType;
use padv::pipeline::{Scorer, ScorerOptions};
use padv::score::aggregate::TokenAgg;
use padv::trajectory::read_records;
use serde_json::Value;

/// The bundled pair; `CARGO_MANIFEST_DIR` at run time wins, so a test binary
/// built here runs from another checkout (scripts/gpu-check.sh carries them).
fn toyworld() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("assets/toyworld")
}

fn check(set: &str, device: Device) {
    check_with(set, device, None, 1e-4, 1e-4);
}

/// The check with a GPU compute dtype, a bound on every |Δ| and one on their
/// mean.
fn check_with(set: &str, device: Device, gpu_dtype: Option<DType>, max_tol: f64, mean_tol: f64) {
    let dir = toyworld();
    let opts = ScorerOptions {
        device,
        gpu_dtype,
        token_agg: TokenAgg::Sum,
        ..ScorerOptions::default()
    };
    let mut scorer =
        Scorer::load(&dir.join("models/trained"), &dir.join("models/ref"), opts).unwrap();
    let records: Vec<_> = read_records(&dir.join(format!("demo_{set}.jsonl")), None)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
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
    let (mut worst, mut sum, mut count) = (0.0f64, 0.0f64, 0usize);
    for s in scored {
        let s = s.unwrap();
        let want = &expected[&s.record.id];
        for (key, get) in [
            (
                "steps",
                (|st: &padv::apps::StepScore| st.advantage)
                    as fn(&padv::apps::StepScore) -> Option<f64>,
            ),
            ("logp_policy", |st| st.logp_policy),
            ("logp_reference", |st| st.logp_reference),
        ] {
            let w = want[key].as_array().unwrap();
            assert_eq!(w.len(), s.steps.len(), "{}: number of steps", s.record.id);
            for (k, (wv, st)) in w.iter().zip(&s.steps).enumerate() {
                let d = (wv.as_f64().unwrap() - get(st).unwrap()).abs();
                worst = worst.max(d);
                (sum, count) = (sum + d, count + 1);
                assert!(
                    d <= max_tol,
                    "{} {key}[{k}]: padv {:?} vs {}",
                    s.record.id,
                    get(st),
                    wv
                );
            }
        }
    }
    let mean = sum / count.max(1) as f64;
    eprintln!(
        "demo_{set} on {device:?} ({gpu_dtype:?}): max |Δ| vs transformers = {worst:.2e}, mean {mean:.2e}"
    );
    assert!(
        mean <= mean_tol,
        "demo_{set}: mean |Δ| {mean:.2e} > {mean_tol}"
    );
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

/// The f32 toyworld pair run in bf16 on the GPU (`gpu_dtype`): every
/// matrix, GEMM input and the KV cache rounded to bf16. On the `llama_bf16`
/// fixture those roundings moved token log-probs by 0.006 on average and
/// 0.06 at most (H200, tests/cuda_parity.rs); a step sums up to ~40 action
/// tokens, so mean 0.1 and max 1.0 nats here. A wrong conversion moves
/// single tokens by nats and steps by tens. (Written after the session's
/// GPU time ran out: first run it on the next GPU session.)
#[cfg(feature = "cuda")]
#[test]
fn toyworld_ref_rollouts_in_bf16_on_the_gpu_stay_near_transformers() {
    if cuda_common::gpu().is_some() {
        check_with("ref", Device::Cuda(0), Some(DType::BF16), 1.0, 0.1);
    }
}
