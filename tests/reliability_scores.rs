//! No score is ever a number built from missing or non-finite data: a
//! checkpoint with NaN weights gives error records (counted, and fatal with
//! `--on-error fail`), `select`/`eval` leave unscored records out and say so,
//! and the CLI refuses the option values the HTTP API refuses.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli_common::{padv, succeed};
use padv::backend::Device;
use padv::pipeline::{ScoredRecord, Scorer, ScorerOptions};
use padv::trajectory::record_from_json;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of the llama fixture policy whose final norm weights are NaN.
fn nan_policy(dir: &Path) -> PathBuf {
    let src = fixtures().join("models/llama/trained");
    let dst = dir.join("nan_policy");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let path = dst.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header["model.norm.weight"];
    assert_eq!(t["dtype"], "F32");
    let (a, b) = (
        t["data_offsets"][0].as_u64().unwrap() as usize,
        t["data_offsets"][1].as_u64().unwrap() as usize,
    );
    for chunk in bytes[8 + n + a..8 + n + b].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    dst
}

fn score_nan(dir: &Path, on_error: &str) -> (Output, PathBuf) {
    let out = dir.join(format!("out-{on_error}.jsonl"));
    let output = padv()
        .args([
            "score",
            "--device",
            "cpu",
            "--on-error",
            on_error,
            "--policy",
        ])
        .arg(nan_policy(dir))
        .arg("--reference")
        .arg(fixtures().join("models/llama/ref"))
        .arg("--input")
        .arg(fixtures().join("inputs/tiny_trajectories.jsonl"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    (output, out)
}

#[test]
fn nan_weights_make_every_record_an_error_naming_the_non_finite_log_prob() {
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = score_nan(dir.path(), "skip");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.get("score").is_none(), "a score was written: {l}");
        let e = l["error"].as_str().unwrap_or_else(|| panic!("{l}"));
        assert!(
            e.contains("policy log-prob at token position") && e.contains("not finite"),
            "{e}"
        );
        // The trace finds the NaN final norm (the first records are traced).
        if std::ptr::eq(l, &lines[0]) {
            assert!(e.contains("first not finite after the final norm"), "{e}");
        }
    }
    assert!(
        stderr.contains(&format!("{} errors", lines.len())),
        "{stderr}"
    );

    let (output, _) = score_nan(dir.path(), "fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not finite"), "{stderr}");
}

/// (`truncated`, `empty`, `n_tokens`) of each step as `padv score` writes it.
fn step_flags(scorer: &Scorer, s: &ScoredRecord) -> Vec<(bool, bool, u64)> {
    let line = scorer.to_json(s);
    line["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            let flag = |k: &str| st[k].as_bool().unwrap_or_else(|| panic!("{k}: {line}"));
            (
                flag("truncated"),
                flag("empty"),
                st["n_tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_empty_action_is_flagged_empty_and_a_cut_one_truncated_and_both_count_zero() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models");
    let opts = ScorerOptions {
        device: Device::Cpu,
        max_length: Some(8),
        ..ScorerOptions::default()
    };
    let mut scorer = Scorer::load(&models.join("trained"), &models.join("ref"), opts).unwrap();
    // `--max-length 8` cuts the first 4 of 12 tokens: the first action
    // [2, 6) keeps 2 of its tokens, the second [8, 11) is whole.
    let record = record_from_json(
        json!({"id": "t", "token_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
               "action_spans": [[2, 6], [8, 11]]}),
        "mem:1",
    )
    .unwrap();
    let cut = scorer.score(&[record]).pop().unwrap().unwrap();
    assert_eq!(
        step_flags(&scorer, &cut),
        [(true, false, 2), (false, false, 3)]
    );
    let whole = cut.steps[1].advantage.unwrap();
    assert_eq!(cut.steps[0].advantage, Some(0.0));
    assert_eq!(cut.score, Some(whole / 2.0), "a truncated step counts 0.0");

    // An action that rendered to no tokens (a chat template can render an
    // empty reply so): the same record with its second action empty.
    let mut encoded = cut.encoded.clone();
    encoded.actions[1].end = encoded.actions[1].start;
    let empty = scorer
        .finish(cut.record.clone(), encoded, cut.tokens.clone())
        .unwrap();
    assert_eq!(
        step_flags(&scorer, &empty),
        [(true, false, 2), (false, true, 0)]
    );
    assert_eq!(empty.steps[1].advantage, Some(0.0));
    // Each counts 0.0, but a score made of those stand-ins alone is none.
    assert_eq!(empty.score, None, "no step with tokens was scored");
}

/// A scored record by hand: one step with 3 tokens whose advantage is
/// `adv` (null: missing, not truncated), in `group`, scored with `beta`.
fn scored(id: &str, group: &str, success: Option<bool>, adv: Value, beta: f64) -> Value {
    let step = json!({"step": 0, "message": 1, "n_tokens": 3, "advantage": adv,
                      "logp_policy": adv, "logp_reference": 0.0, "truncated": false});
    let mut r = json!({"id": id, "task_id": group, "steps": [step],
                       "settings": {"token_agg": "mean", "step_agg": "mean", "beta": beta}});
    if let Some(s) = success {
        r["success"] = json!(s);
    }
    r
}

/// A scored file: in group `g`, `a` has a step value and `b` a step whose
/// value is missing; `c` alone in group `h`; then `more`.
fn scored_file(dir: &Path, more: &[Value]) -> PathBuf {
    let mut lines = vec![
        scored("a", "g", Some(true), json!(-1.0), 1.0),
        scored("b", "g", Some(false), Value::Null, 1.0),
        scored("c", "h", Some(false), json!(-2.0), 1.0),
    ];
    lines.extend_from_slice(more);
    let path = dir.join("scored.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `padv eval` of `input`: its output and its `--json` report.
fn eval(input: &Path) -> (Output, Value) {
    let json_path = input.with_extension("eval.json");
    let out = succeed(
        padv()
            .args(["eval", "--input"])
            .arg(input)
            .arg("--json")
            .arg(&json_path),
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    (out, report)
}

#[test]
fn select_leaves_out_rollouts_without_a_valid_score_and_error_records_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = scored_file(dir.path(), &[json!({"id": "e", "error": "too long"})]);
    let out = succeed(padv().args(["select", "--input"]).arg(&input));
    let chosen = json_lines(&out.stdout);
    let ids: Vec<&str> = chosen.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "c"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("left out 1 of 3"), "{stderr}");
    assert!(
        stderr.contains("skipped 1 error record (no scores)") && stderr.contains("too long"),
        "{stderr}"
    );
}

#[test]
fn eval_leaves_out_trajectories_without_a_valid_score_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = eval(&scored_file(dir.path(), &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 without a valid progress-advantage score left out"),
        "{stdout}"
    );
    assert_eq!(report["skipped"]["unscored"], 1);
    assert_eq!(report["uncertainty"]["progress_advantage"]["n"], 2);
}

#[test]
fn attribute_writes_one_line_per_record_and_never_attributes_around_a_missing_step() {
    let dir = tempfile::tempdir().unwrap();
    let input = scored_file(dir.path(), &[json!({"id": "e", "error": "too long"})]);
    let out = succeed(padv().args(["attribute", "--input"]).arg(&input));
    let lines = json_lines(&out.stdout);
    let ids: Vec<&str> = lines.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c", "e"], "every input record, in order");
    assert!(lines[0]["error"].is_null() && lines[2]["error"].is_null());
    let b = lines[1]["error"].as_str().unwrap();
    assert!(b.contains("step 0 has tokens but no"), "{b}");
    assert_eq!(lines[3]["error"], "too long");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped 1 error record"), "{stderr}");
}

#[test]
fn select_refuses_rollouts_scored_on_different_scales() {
    let dir = tempfile::tempdir().unwrap();
    let input = scored_file(dir.path(), &[scored("d", "h", None, json!(-4.0), 2.0)]);
    let out = padv()
        .args(["select", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("scored.jsonl:4") && stderr.contains("different scales"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing selected");
}

#[test]
fn best_of_n_leaves_out_groups_with_an_unlabelled_rollout_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    // Group h gains a rollout whose outcome is unknown.
    let input = scored_file(dir.path(), &[scored("d", "h", None, json!(-4.0), 1.0)]);
    let (out, report) = eval(&input);
    assert_eq!(report["best_of_n"]["n_groups"], 1, "{report}");
    assert_eq!(report["best_of_n"]["unlabelled_groups"], 1, "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("; 1 left out (a rollout without a success label)"),
        "{stdout}"
    );
}

/// `padv ARGS --input INPUT --output OUTPUT` is refused as writing its
/// input, which it leaves as it was.
fn refuses_to_overwrite(args: &[&str], input: &Path, output: &Path) {
    let before = std::fs::read(input).unwrap();
    let out = padv()
        .args(args)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?}");
    assert!(stderr.contains("is the input"), "{args:?}: {stderr}");
    assert_eq!(
        std::fs::read(input).unwrap(),
        before,
        "{args:?} wrote its input"
    );
}

#[test]
fn an_output_that_is_the_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = scored_file(dir.path(), &[]);
    // The same file by another name, too.
    let alias = dir.path().join("alias.jsonl");
    std::os::unix::fs::symlink(&input, &alias).unwrap();
    for cmd in ["select", "attribute"] {
        refuses_to_overwrite(&[cmd], &input, &input);
        refuses_to_overwrite(&[cmd], &input, &alias);
    }
    let copy = dir.path().join("in.jsonl");
    std::fs::copy(fixtures().join("inputs/tiny_trajectories.jsonl"), &copy).unwrap();
    refuses_to_overwrite(&["score", "--device", "cpu"], &copy, &copy);
}

/// Runs `cmd`, killing it after `limit` (a server that should not have
/// started); `None` when it had to be killed.
fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

fn refused(args: &[&str], flag: &str, reason: &str) {
    let out = output_within(padv().args(args), Duration::from_secs(60))
        .unwrap_or_else(|| panic!("`padv {}` was not refused", args.join(" ")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`padv {}` succeeded", args.join(" "));
    assert!(
        stderr.contains(flag) && stderr.contains(reason),
        "`padv {}`: {stderr}",
        args.join(" ")
    );
}

#[test]
fn beta_values_the_http_api_rejects_are_rejected_by_the_cli() {
    for beta in ["NaN", "inf", "-inf", "1e308"] {
        refused(&["score", "--beta", beta], "--beta", "finite");
    }
}

#[test]
fn a_negative_beta_is_accepted_without_an_equals_sign() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    succeed(
        padv()
            .args(["score", "--device", "cpu", "--beta", "-1", "--output"])
            .arg(&out),
    );
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["settings"]["beta"], -1.0);
}

#[test]
fn zero_budgets_queues_and_durations_are_rejected() {
    refused(
        &["score", "--batch-tokens", "0"],
        "--batch-tokens",
        "at least 1",
    );
    refused(
        &["score", "--max-length", "0"],
        "--max-length",
        "at least 1",
    );
    let addr = ["--addr", "127.0.0.1:0"];
    refused(
        &["serve", addr[0], addr[1], "--queue", "0"],
        "--queue",
        "at least 1",
    );
    refused(
        &["serve", addr[0], addr[1], "--session-ttl", "0s"],
        "--session-ttl",
        "longer than zero",
    );
    refused(
        &["serve", addr[0], addr[1], "--read-timeout", "0s"],
        "--read-timeout",
        "longer than zero",
    );
    refused(
        &["serve", addr[0], addr[1], "--max-connections", "0"],
        "--max-connections",
        "at least 1",
    );
    refused(
        &["serve", addr[0], addr[1], "--api-key", "two words"],
        "--api-key",
        "without spaces",
    );
}

#[test]
fn bench_options_that_cannot_apply_are_refused_before_any_work() {
    refused(&["bench", "--repeats", "0"], "--repeats", "at least 1");
    refused(
        &["bench", "--prefix-cache", "--tokens", "64"],
        "--tokens",
        "cannot be used with",
    );
    let llama = fixtures().join("models/llama");
    let (policy, reference) = (llama.join("trained"), llama.join("ref"));
    refused(
        &[
            "bench",
            "--device",
            "cpu",
            "--policy",
            policy.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--tokens",
            "4000000000",
        ],
        "--tokens",
        "past the model's context of 2048",
    );
}

#[test]
fn eval_writes_no_file_over_its_input_and_has_no_output_option() {
    let dir = tempfile::tempdir().unwrap();
    let input = scored_file(dir.path(), &[]);
    let before = std::fs::read(&input).unwrap();
    let path = input.to_str().unwrap();
    refused(
        &["eval", "--input", path, "--json", path],
        "--json",
        "is the input",
    );
    refused(
        &["eval", "--input", path, "--report", path],
        "--report",
        "is the input",
    );
    refused(
        &["eval", "--input", path, "--output", "x.md"],
        "--output",
        "stdout",
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);
}
