//! `PADV_CPU_KERNELS` chooses the CPU kernels of one portable binary: every
//! level this CPU has scores the toyworld demo to the same steps, the fused
//! levels (avx2, avx512) to the same bytes, and a level the CPU lacks or an
//! unknown value is a clear error. (CI also runs the parity tests with
//! `PADV_CPU_KERNELS=portable`.)

mod cli_common;

use cli_common::{padv, succeed};
use padv::simd::{Level, detected};
use serde_json::Value;

fn score(level: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    succeed(
        padv()
            .env("PADV_CPU_KERNELS", level)
            .args(["score", "--device", "cpu", "--tokens", "--output"])
            .arg(&out),
    );
    std::fs::read(&out).unwrap()
}

fn steps(bytes: &[u8]) -> Vec<Vec<f64>> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["advantage"].as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn every_level_of_this_cpu_scores_the_demo_alike_and_fused_levels_identically() {
    let levels: Vec<Level> = [Level::Portable, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= detected())
        .collect();
    let best = score(detected().name());
    let want = steps(&best);
    assert_eq!(want.len(), 256, "the demo has 256 trajectories");
    for level in levels {
        let got = score(level.name());
        let got_steps = steps(&got);
        assert_eq!(got_steps.len(), want.len(), "{level:?}: records");
        for (g, w) in got_steps.iter().zip(&want) {
            assert_eq!(g.len(), w.len(), "{level:?}: steps");
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-4, "{level:?}: step advantage {a} vs {b}");
            }
        }
        let fused = level >= Level::Avx2 || cfg!(target_arch = "aarch64");
        if fused && detected() >= Level::Avx2 {
            assert!(got == best, "{level:?}: not the bytes of {:?}", detected());
        } else if detected() == Level::Avx512 {
            // The portable GEMM multiplies and adds separately: that the bytes
            // differ shows the variable really switched the kernels.
            assert!(got != best, "{level:?}: the kernels did not change");
        }
    }
}

#[test]
fn an_unknown_or_unavailable_level_is_an_error_naming_the_variable() {
    let out = padv()
        .env("PADV_CPU_KERNELS", "sse9")
        .args(["score", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PADV_CPU_KERNELS=\"sse9\"") && err.contains("portable"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    if detected() < Level::Avx512 {
        let out = padv()
            .env("PADV_CPU_KERNELS", "avx512")
            .args(["score", "--device", "cpu"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("supports at most"),
            "{err}"
        );
    }
}
