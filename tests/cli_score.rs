//! `padv score --tokens` end to end on every fixture pair: tokenization of
//! text records (with and without special tokens, unicode), raw ids, and
//! chat records through the chat template, against transformers' token ids,
//! log-probs (≤ 1e-4) and action masks.

mod cli_common;

use std::path::Path;

use cli_common::{padv, succeed};

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

/// `--gpu-dtype` is for the CUDA backend: on the CPU it is refused with a
/// reason (not silently ignored), and a bad value is named.
#[test]
fn gpu_dtype_on_the_cpu_backend_is_refused_with_the_reason() {
    let run = |args: &[&str]| padv().args(args).output().unwrap();
    let out = run(&["score", "--device", "cpu", "--gpu-dtype", "bf16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("GPU dtype bf16") && err.contains("the CPU was asked for"),
        "{err}"
    );
    let out = run(&["score", "--gpu-dtype", "b16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown dtype `b16`"), "{err}");
}
