//! Per-token log-probs of every fixture pair against Hugging Face
//! transformers (tests/fixtures/expected/tiny_*.json, f32 forward, f64
//! log-softmax). Every record's token ids are scored; |Δ| ≤ 1e-4.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use padv::backend::{Device, SeqRequest, open_pair};
use padv::model::Model;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn floats(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

fn check_pair(name: &str) {
    check_expected(name, &format!("tiny_{name}"));
}

fn check_expected(name: &str, expected_file: &str) {
    let dir = fixtures().join("models").join(name);
    let policy = Arc::new(Model::load(&dir.join("trained")).unwrap());
    let reference = Arc::new(Model::load(&dir.join("ref")).unwrap());
    let mut scorer = open_pair(Device::Cpu, policy, reference).unwrap();
    let text =
        std::fs::read_to_string(fixtures().join(format!("expected/{expected_file}.json"))).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    let records = expected["records"].as_array().unwrap();
    let batch: Vec<SeqRequest> = records
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
        .collect();
    let scores = scorer.score(&batch).unwrap();
    let mut worst = 0.0f64;
    for (r, s) in records.iter().zip(&scores) {
        let id = r["id"].as_str().unwrap();
        for (key, got) in [
            ("logprobs_trained", &s.logp_policy),
            ("logprobs_ref", &s.logp_reference),
        ] {
            let want = floats(&r[key]);
            assert_eq!(want.len(), got.len(), "{name}/{id}: length");
            assert!(
                want[0].is_none() && got[0].is_nan(),
                "{name}/{id}: index 0 must be unscored"
            );
            for (t, (w, g)) in want.iter().zip(got).enumerate().skip(1) {
                let d = (w.unwrap() - *g as f64).abs();
                worst = worst.max(d);
                assert!(
                    d <= 1e-4,
                    "{name}/{id} {key}[{t}]: padv {g}, transformers {}",
                    w.unwrap()
                );
            }
        }
    }
    eprintln!(
        "{expected_file}: {} records, max |Δ logp| = {worst:.2e}",
        records.len()
    );
}

#[test]
fn llama_pair_matches_transformers() {
    check_pair("llama");
}
#[test]
fn llama3_rope_scaled_pair_matches_transformers() {
    check_pair("llama3scaled");
}
#[test]
fn qwen2_pair_with_padded_vocab_matches_transformers() {
    check_pair("qwen2");
}
#[test]
fn mistral_pair_matches_transformers() {
    check_pair("mistral");
}
#[test]
fn qwen3_pair_with_qk_norm_matches_transformers() {
    check_pair("qwen3");
}
#[test]
fn bf16_llama_pair_matches_transformers() {
    check_pair("llama_bf16");
}

#[test]
fn olmo3_pair_matches_transformers() {
    check_pair("olmo3");
}
#[test]
fn olmo3_pair_matches_transformers_on_long_records() {
    check_expected("olmo3", "long_olmo3");
}
#[test]
fn gemma4_pair_matches_transformers() {
    check_pair("gemma4");
}
#[test]
fn gemma4_pair_matches_transformers_on_long_records() {
    check_expected("gemma4", "long_gemma4");
}
#[test]
fn qwen3_5_hybrid_pair_matches_transformers() {
    check_pair("qwen3_5");
}
#[test]
fn qwen3_5_hybrid_pair_matches_transformers_on_records_longer_than_a_chunk() {
    check_expected("qwen3_5", "long_qwen3_5");
}
