//! `padv score` on the Qwen 3.5 hybrid pair with no flag beyond the usual
//! ones (default device, prefix cache on): every record of the tiny and the
//! long inputs (text, raw ids, chats with action masks, records longer than
//! one delta-rule chunk) matches transformers' log-probs to 1e-4.

mod cli_common;

use std::path::Path;

use cli_common::{padv, pair_args, succeed};
use serde_json::Value;

/// Score `inputs/{input}` with the CLI; returns the worst |Δ| against
/// `expected/{expected}` over both models' log-probs and their difference.
fn worst_delta(input: &str, expected: &str) -> f64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let pair = root.join("models/qwen3_5");
    let out = tempfile::tempdir().unwrap();
    let out_path = out.path().join("scores.jsonl");
    succeed(
        padv()
            .arg("score")
            .args(pair_args(&pair))
            .arg("--input")
            .arg(root.join("inputs").join(input))
            .args(["--tokens", "--output"])
            .arg(&out_path),
    );
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(expected)).unwrap()).unwrap();
    let want = want["records"].as_array().unwrap();
    let text = std::fs::read_to_string(&out_path).unwrap();
    let got: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{input}: records");
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let id = &w["id"];
        assert_eq!((&g["id"], &g["token_ids"]), (id, &w["token_ids"]));
        if let Some(mask) = w.get("action_mask") {
            assert_eq!(&g["action_mask"], mask, "{id}: action mask");
        }
        for (ours, theirs) in [
            ("logp_policy", "logprobs_trained"),
            ("logp_reference", "logprobs_ref"),
            ("advantage", "diff"),
        ] {
            let pairs = g[ours]
                .as_array()
                .unwrap()
                .iter()
                .zip(w[theirs].as_array().unwrap());
            for (t, (a, b)) in pairs.enumerate().skip(1) {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!((a - b).abs() <= 1e-4, "{id} {ours}[{t}]: {a} vs {b}");
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

#[test]
fn the_cli_scores_the_hybrid_pair_like_transformers_with_no_extra_flag() {
    let tiny = worst_delta("tiny_trajectories.jsonl", "expected/tiny_qwen3_5.json");
    let long = worst_delta("long_trajectories.jsonl", "expected/long_qwen3_5.json");
    eprintln!("qwen3_5 through the CLI: max |Δ| tiny {tiny:.2e}, long {long:.2e}");
    assert!(tiny > 0.0 && long > 0.0, "nothing was compared");
}
