//! `padv score --tokens` end to end on every fixture pair: tokenization of
//! text records (with and without special tokens, unicode), raw ids, and
//! chat records through the chat template, against transformers' token ids,
//! log-probs (≤ 1e-4) and action masks.

mod cli_common;

use std::path::Path;

use cli_common::{padv, pair_args, succeed};

use serde_json::Value;

fn run_pair(name: &str) {
    run_inputs(name, "tiny_trajectories", &format!("tiny_{name}"));
}

fn run_inputs(name: &str, input: &str, expected_file: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let models = root.join("models").join(name);
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.jsonl");
    succeed(
        padv()
            .args(["score", "--device", "cpu", "--tokens", "--policy"])
            .arg(models.join("trained"))
            .arg("--reference")
            .arg(models.join("ref"))
            .arg("--input")
            .arg(root.join(format!("inputs/{input}.jsonl")))
            .arg("--output")
            .arg(&out_path),
    );
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join(format!("expected/{expected_file}.json"))).unwrap(),
    )
    .unwrap();
    let got: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = expected["records"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let id = w["id"].as_str().unwrap();
        assert_eq!(g["id"], w["id"]);
        assert_eq!(g["token_ids"], w["token_ids"], "{name}/{id}: token ids");
        for (gk, wk) in [
            ("logp_policy", "logprobs_trained"),
            ("logp_reference", "logprobs_ref"),
            ("advantage", "diff"),
        ] {
            let (ga, wa) = (g[gk].as_array().unwrap(), w[wk].as_array().unwrap());
            assert_eq!(ga.len(), wa.len());
            assert!(
                ga[0].is_null() && wa[0].is_null(),
                "{name}/{id}: first token unscored"
            );
            for (t, (a, b)) in ga.iter().zip(wa).enumerate().skip(1) {
                let d = (a.as_f64().unwrap() - b.as_f64().unwrap()).abs();
                assert!(d <= 1e-4, "{name}/{id} {gk}[{t}]: {a} vs {b}");
            }
        }
        if let Some(mask) = w.get("action_mask") {
            assert_eq!(&g["action_mask"], mask, "{name}/{id}: action mask");
            assert!(!g["steps"].as_array().unwrap().is_empty());
        }
    }
}

#[test]
fn olmo3_records_score_like_transformers_through_the_cli() {
    run_pair("olmo3");
    run_inputs("olmo3", "long_trajectories", "long_olmo3");
}

#[test]
fn gemma4_records_score_like_transformers_through_the_cli() {
    run_pair("gemma4");
    run_inputs("gemma4", "long_trajectories", "long_gemma4");
}

#[test]
fn llama_records_score_like_transformers_through_the_cli() {
    run_pair("llama");
}
#[test]
fn qwen3_records_score_like_transformers_through_the_cli() {
    run_pair("qwen3");
}
#[test]
fn llama3_scaled_records_score_like_transformers_through_the_cli() {
    run_pair("llama3scaled");
}
#[test]
fn qwen2_records_score_like_transformers_through_the_cli() {
    run_pair("qwen2");
}
#[test]
fn mistral_records_score_like_transformers_through_the_cli() {
    run_pair("mistral");
}
#[test]
fn bf16_records_score_like_transformers_through_the_cli() {
    run_pair("llama_bf16");
}

/// `--compute-dtype bf16` (and its alias `--gpu-dtype`) runs the CPU's bf16
/// mode: log-probs within 2.5× the emulated bf16 error of transformers
/// (llama_bf16: 0.039 max, 0.0093 mean, tests/cpu_bf16.rs) and far from
/// the f32 path's 1e-5; f16 is refused on the CPU with the reason, and a
/// bad value is named.
#[test]
fn compute_dtype_bf16_runs_on_the_cpu_and_f16_is_refused_there() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let models = root.join("models/llama_bf16");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("expected/tiny_llama_bf16.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--compute-dtype", "--gpu-dtype"] {
        let out_path = dir.path().join("out.jsonl");
        succeed(
            padv()
                .args(["score", "--device", "cpu", "--tokens", flag, "bf16"])
                .args(pair_args(&models))
                .arg("--input")
                .arg(root.join("inputs/tiny_trajectories.jsonl"))
                .arg("--output")
                .arg(&out_path),
        );
        let got: Vec<Value> = std::fs::read_to_string(&out_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want = expected["records"].as_array().unwrap();
        let mut d = Vec::new();
        for (g, w) in got.iter().zip(want) {
            let (ga, wa) = (
                g["logp_policy"].as_array().unwrap(),
                w["logprobs_trained"].as_array().unwrap(),
            );
            for (a, b) in ga.iter().zip(wa).skip(1) {
                d.push((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
            }
        }
        let max = d.iter().copied().fold(0.0, f64::max);
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        assert!(max <= 2.5 * 0.039, "{flag} bf16: max |Δ| {max}");
        assert!(
            mean >= 0.0093 / 10.0,
            "{flag} bf16: mean |Δ| {mean}: not bf16?"
        );
    }
    let run = |args: &[&str]| padv().args(args).output().unwrap();
    let out = run(&["score", "--device", "cpu", "--compute-dtype", "f16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("compute dtype f16") && err.contains("--compute-dtype bf16"),
        "{err}"
    );
    let out = run(&["score", "--gpu-dtype", "b16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown compute dtype `b16`"), "{err}");
}

/// bf16 mode gives the same bytes at the FMA kernel levels this CPU runs
/// (`PADV_CPU_KERNELS`: `vdpbf16ps` where the CPU has AVX512-BF16, its f32
/// emulation at avx2, attention tiles with the same bits). The portable
/// level's bf16 GEMM is the same emulation, but its attention tile rounds
/// products and sums apart (no FMA on baseline x86): a last-bit change
/// before an activation's bf16 rounding can move it by a bf16 ulp, so its
/// scores agree within bf16 mode's own error (this pair: ≤ 0.056 per model
/// from transformers f32, docs/cpu.md), not to the bit.
#[test]
fn bf16_scores_are_the_same_bytes_at_every_fma_kernel_level() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let models = root.join("models/qwen3");
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for level in ["avx512", "avx2", "portable"] {
        let out_path = dir.path().join(format!("{level}.jsonl"));
        let out = padv()
            .env("PADV_CPU_KERNELS", level)
            .args([
                "score",
                "--device",
                "cpu",
                "--tokens",
                "--compute-dtype",
                "bf16",
            ])
            .args(pair_args(&models))
            .arg("--input")
            .arg(root.join("inputs/tiny_trajectories.jsonl"))
            .arg("--output")
            .arg(&out_path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("this CPU supports at most") {
            eprintln!("{level}: not on this CPU, skipped");
            continue;
        }
        assert!(out.status.success(), "{level}: {err}");
        outputs.push((level, std::fs::read(&out_path).unwrap()));
    }
    assert!(!outputs.is_empty());
    let (first, base) = &outputs[0];
    for (level, bytes) in &outputs[1..] {
        if *level != "portable" {
            assert!(bytes == base, "{level} differs from {first}");
            continue;
        }
        let lines = |b: &[u8]| -> Vec<Value> {
            String::from_utf8_lossy(b)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (a, b) = (lines(base), lines(bytes));
        assert_eq!(a.len(), b.len());
        let mut worst = 0.0f64;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["token_ids"], y["token_ids"]);
            for key in ["logp_policy", "logp_reference"] {
                let (xs, ys) = (x[key].as_array().unwrap(), y[key].as_array().unwrap());
                assert_eq!(xs.len(), ys.len());
                for (u, v) in xs.iter().zip(ys) {
                    if let (Some(u), Some(v)) = (u.as_f64(), v.as_f64()) {
                        worst = worst.max((u - v).abs());
                    } else {
                        assert_eq!(u, v, "{key}: a null on one level only");
                    }
                }
            }
        }
        assert!(worst <= 0.12, "portable differs from {first} by {worst}");
    }
}
