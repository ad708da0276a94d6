//! The CPU backend's bf16 compute mode (`--compute-dtype bf16`) on every
//! fixture pair, against transformers' f32 log-probs
//! (tests/fixtures/expected/tiny_*.json).
//!
//! The bounds come from `python3 scripts/bf16_emulation.py --cpu PAIR
//! tests/fixtures/expected/tiny_PAIR.json`, a float64 NumPy forward with
//! exactly this mode's roundings (every weight GEMM's inputs, the LM head's
//! included, rounded to bf16; in attention Q, K, V and the softmax
//! numerators for P·V rounded; embedding exact), as the GPU
//! bf16 test derives its own (tests/cuda_parity.rs): bound = 2.5 × the
//! emulated max and mean |Δ logp| per model. The emulation covers the six
//! Llama-family pairs (biases, q/k norms and llama3 RoPE scaling included);
//! olmo3, gemma4 and qwen3_5 (sandwich norms, per-layer inputs, DeltaNet) are
//! not emulated: their errors are printed, and only the floor is asserted.
//! The floor catches a silent f32 run: the mean must reach a tenth of the
//! emulated one (f32 lands near 1e-6, ~10⁴ times lower).

mod kv_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use padv::backend::cpu::CpuPair;
use padv::backend::cpu::gemm_bf16::Gemm;
use padv::backend::{ComputeDtype, Device, PairScorer, SeqRequest, open_pair_with};
use padv::kv::KvOptions;
use padv::model::Model;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Emulated |Δ logp| per model (the larger of policy and reference), max and
/// mean over the fixture records' 314 scored tokens.
const EMULATED: [(&str, f64, f64); 6] = [
    ("llama", 0.0597, 0.01453),
    ("llama3scaled", 0.0810, 0.01679),
    ("llama_bf16", 0.0577, 0.01122),
    ("mistral", 0.0729, 0.01609),
    ("qwen2", 0.0670, 0.01220),
    ("qwen3", 0.0594, 0.01315),
];
const MARGIN: f64 = 2.5;

/// (max, mean) of the pair's emulation; `None` for a pair not emulated.
fn emulated(name: &str) -> Option<(f64, f64)> {
    EMULATED
        .iter()
        .find(|e| e.0 == name)
        .map(|&(_, max, mean)| (max, mean))
}

/// The smallest emulated mean: the floor of the pairs not emulated.
fn least_mean() -> f64 {
    EMULATED.iter().map(|e| e.2).fold(f64::INFINITY, f64::min)
}

fn requests(records: &[Value]) -> Vec<SeqRequest> {
    records
        .iter()
        .map(|r| SeqRequest {
            token_ids: r["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect(),
            score_mask: None,
        })
        .collect()
}

/// |Δ logp| against transformers per (policy, reference, difference): (max, mean).
fn deviations(name: &str, compute: ComputeDtype) -> [(f64, f64); 3] {
    let dir = fixtures().join("models").join(name);
    let policy = Arc::new(Model::load(&dir.join("trained")).unwrap());
    let reference = Arc::new(Model::load(&dir.join("ref")).unwrap());
    let mut scorer = open_pair_with(Device::Cpu, policy, reference, compute).unwrap();
    let path = fixtures().join(format!("expected/tiny_{name}.json"));
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let records = expected["records"].as_array().unwrap();
    let scores = scorer.score(&requests(records)).unwrap();
    let mut d: [Vec<f64>; 3] = Default::default();
    for (r, s) in records.iter().zip(&scores) {
        let want = |key: &str| -> Vec<f64> {
            r[key].as_array().unwrap()[1..]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let (wp, wr) = (want("logprobs_trained"), want("logprobs_ref"));
        for t in 1..s.logp_policy.len() {
            let (gp, gr) = (s.logp_policy[t] as f64, s.logp_reference[t] as f64);
            let (ep, er) = (gp - wp[t - 1], gr - wr[t - 1]);
            d[0].push(ep.abs());
            d[1].push(er.abs());
            d[2].push((ep - er).abs());
        }
    }
    d.map(|v| {
        let max = v.iter().copied().fold(0.0, f64::max);
        (max, v.iter().sum::<f64>() / v.len() as f64)
    })
}

fn pairs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 9, "fixture pairs missing: {names:?}");
    names
}

#[test]
fn bf16_compute_stays_within_the_emulated_bf16_error_on_every_fixture_pair() {
    eprintln!("pair          mode  |Δ| policy max/mean   reference max/mean  difference max/mean");
    for name in pairs() {
        let bound = emulated(&name);
        let floor = bound.map_or(least_mean(), |b| b.1) / 10.0;
        for compute in [ComputeDtype::F32, ComputeDtype::Bf16] {
            let d = deviations(&name, compute);
            let [p, r, diff] = d;
            eprintln!(
                "{name:<13} {:<5} {:.2e} / {:.2e}   {:.2e} / {:.2e}   {:.2e} / {:.2e}",
                compute.name(),
                p.0,
                p.1,
                r.0,
                r.1,
                diff.0,
                diff.1
            );
            for (which, (max, mean)) in [("policy", p), ("reference", r)] {
                if compute == ComputeDtype::F32 {
                    assert!(max <= 1e-4, "{name} f32 {which}: max |Δ| {max:.2e}");
                    continue;
                }
                if let Some((emax, emean)) = bound {
                    assert!(
                        max <= MARGIN * emax,
                        "{name} bf16 {which}: max |Δ| {max:.3e} > {MARGIN} × emulated {emax}"
                    );
                    assert!(
                        mean <= MARGIN * emean,
                        "{name} bf16 {which}: mean |Δ| {mean:.3e} > {MARGIN} × emulated {emean}"
                    );
                }
                assert!(
                    mean >= floor,
                    "{name} bf16 {which}: mean |Δ| {mean:.2e} is too small for bf16: was it used?"
                );
            }
        }
    }
}

/// The prefix cache stores what the bf16 forward computed, and a row never
/// depends on its batch: a cached prefix changes no bit in bf16 mode either.
#[test]
fn bf16_scores_are_the_same_bits_with_and_without_the_prefix_cache() {
    let (p, r) = kv_common::load("llama_bf16");
    let opts = KvOptions {
        budget_bytes: 64 << 20,
        block_size: 16,
    };
    let mut off = CpuPair::new(p.clone(), r.clone()).with_gemm(Gemm::Bf16);
    let mut on = CpuPair::new(p, r)
        .with_gemm(Gemm::Bf16)
        .with_prefix_cache(Some(opts));
    let prefix: Vec<u32> = (0..70).map(|i| (i * 37 % 500) as u32 + 3).collect();
    let longer: Vec<u32> = prefix.iter().copied().chain([7, 9, 11, 400, 5]).collect();
    let req = |ids: &[u32]| SeqRequest {
        token_ids: ids.to_vec(),
        score_mask: None,
    };
    on.score(&[req(&prefix)]).unwrap();
    let cached = on.score(&[req(&longer)]).unwrap();
    let fresh = off.score(&[req(&longer)]).unwrap();
    assert!(
        on.cache_stats().unwrap().hit_tokens > 0,
        "no prefix was reused"
    );
    kv_common::assert_same("bf16 cache on/off", &fresh[0], &cached[0], 0.0);
}

#[test]
fn f16_compute_on_the_cpu_is_refused_with_the_reason() {
    let (p, r) = kv_common::load("llama");
    let err = open_pair_with(Device::Cpu, p, r, ComputeDtype::F16)
        .err()
        .expect("f16 on the CPU must be refused")
        .to_string();
    assert!(
        err.contains("f16") && err.contains("--compute-dtype bf16"),
        "{err}"
    );
}
