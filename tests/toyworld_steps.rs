//! End-to-end check on the bundled toyworld pair: per-step progress
//! advantage (template rendering, token_agg sum, β = 1) of all 512 demo
//! trajectories equals the numbers transformers computed
//! (assets/toyworld/expected_steps_demo_*.jsonl), to 1e-4.

use std::collections::HashMap;
use std::path::PathBuf;

use padv::backend::Device;
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
    let dir = toyworld();
    let opts = ScorerOptions {
        device,
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
    let mut worst = 0.0f64;
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
                assert!(
                    d <= 1e-4,
                    "{} {key}[{k}]: padv {:?} vs {}",
                    s.record.id,
                    get(st),
                    wv
                );
            }
        }
    }
    eprintln!("demo_{set} on {device:?}: max |Δ| vs transformers = {worst:.2e}");
}

#[test]
fn toyworld_ref_rollouts_match_transformers_step_by_step() {
    check("ref", Device::Cpu);
}

#[test]
fn toyworld_trained_rollouts_match_transformers_step_by_step() {
    check("trained", Device::Cpu);
}

/// The same check through the CUDA backend (f32 checkpoints, so cuBLAS runs
/// f32 GEMMs and the 1e-4 budget holds as on the CPU). Skips with the reason
/// when CUDA is unusable, unless `PADV_REQUIRE_GPU` is set.
#[cfg(feature = "cuda")]
fn gpu_or_skip() -> bool {
    match padv::backend::cuda::probe() {
        Ok(_) => true,
        Err(why) if std::env::var_os("PADV_REQUIRE_GPU").is_some() => {
            panic!("PADV_REQUIRE_GPU is set but CUDA is unusable: {why}")
        }
        Err(why) => {
            eprintln!("skipping CUDA test: {why}");
            false
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn toyworld_ref_rollouts_match_transformers_on_the_gpu() {
    if gpu_or_skip() {
        check("ref", Device::Cuda(0));
    }
}

#[cfg(feature = "cuda")]
#[test]
fn toyworld_trained_rollouts_match_transformers_on_the_gpu() {
    if gpu_or_skip() {
        check("trained", Device::Cuda(0));
    }
}
