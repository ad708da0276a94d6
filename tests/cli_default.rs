//! The embedded default, end to end through the binary: `padv eval` with no
//! arguments reproduces the numbers an independent implementation computed
//! on the bundled toyworld demo sets (assets/toyworld/expected_eval_demo_*.json),
//! and `padv score` with no arguments prints a per-step table.

mod cli_common;

use std::path::Path;

use cli_common::{padv, pair_args, succeed};

use serde_json::Value;

/// Every number in `want` must appear in `got` at the same path.
fn assert_numbers_match(want: &Value, got: &Value, path: &str, tol: f64) {
    match want {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "settings" {
                    continue;
                }
                let g = got.get(k).unwrap_or_else(|| panic!("missing {path}.{k}"));
                assert_numbers_match(v, g, &format!("{path}.{k}"), tol);
            }
        }
        Value::Number(n) => {
            let (w, g) = (
                n.as_f64().unwrap(),
                got.as_f64()
                    .unwrap_or_else(|| panic!("{path}: not a number: {got}")),
            );
            assert!((w - g).abs() <= tol, "{path}: padv {g}, expected {w}");
        }
        _ => {}
    }
}

#[test]
fn eval_without_arguments_reproduces_the_expected_toyworld_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("eval.json");
    let cache = dir.path().join("cache");
    let out = succeed(
        padv()
            .env("PADV_CACHE_DIR", &cache)
            .args(["eval", "--json"])
            .arg(&json),
    );
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld");
    // The sets are keyed by the paths read: the bundle written under the cache.
    let bundle = padv::toyworld::dir_under(&cache).unwrap();
    for set in ["ref", "trained"] {
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(toy.join(format!("expected_eval_demo_{set}.json"))).unwrap(),
        )
        .unwrap();
        let key = bundle
            .join(format!("demo_{set}.jsonl"))
            .display()
            .to_string();
        assert_numbers_match(&want, &got[&key], set, 1e-6);
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| progress_advantage |"), "{table}");
}

#[test]
fn score_without_arguments_prints_a_step_table_for_every_demo_trajectory() {
    let out = succeed(padv().arg("score"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("\ndemo-").count(),
        256,
        "one table per trajectory"
    );
    assert!(text.contains("advantage") && text.contains("go north"));
    assert!(
        !text.contains("\x1b["),
        "no colour codes when stdout is not a terminal"
    );
}

/// The default pair and demo are compiled in: a binary copied away from the
/// source tree writes them under its cache and scores them, byte for byte as
/// the source tree's files score.
#[test]
fn a_copied_binary_scores_its_bundled_default_as_the_source_tree_scores() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("padv");
    std::fs::copy(env!("CARGO_BIN_EXE_padv"), &bin).unwrap();
    let cache = dir.path().join("cache");
    let copied = dir.path().join("copied.jsonl");
    succeed(
        std::process::Command::new(&bin)
            .current_dir(dir.path())
            .env("PADV_CACHE_DIR", &cache)
            .args(["score", "--output"])
            .arg(&copied),
    );
    let bundle = padv::toyworld::dir_under(&cache).unwrap();
    assert!(
        bundle.starts_with(&cache) && bundle.join("models/ref/model.safetensors").is_file(),
        "{}",
        bundle.display()
    );
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld");
    let source = dir.path().join("source.jsonl");
    succeed(
        padv()
            .arg("score")
            .args(pair_args(&toy.join("models")))
            .arg("--input")
            .arg(toy.join("demo_trained.jsonl"))
            .args(["--token-agg", "sum", "--output"])
            .arg(&source),
    );
    let (a, b) = (
        std::fs::read_to_string(&copied).unwrap(),
        std::fs::read_to_string(&source).unwrap(),
    );
    assert_eq!(a.lines().count(), 256);
    assert!(
        a == b,
        "the bundled default scores differently from the source tree's files"
    );
}

#[test]
fn an_unwritable_cache_is_named_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    // A directory cannot be made under a plain file.
    let out = padv()
        .env("PADV_CACHE_DIR", file.join("cache"))
        .arg("score")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a-file/cache") && err.contains("PADV_CACHE_DIR") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn score_with_on_error_skip_writes_one_line_per_input_record() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.jsonl");
    let input = fixtures.join("formats/bad.jsonl");
    let n_in = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    succeed(
        padv()
            .args(["score", "--on-error", "skip", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&out_path),
    );
    let lines: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), n_in);
    assert!(lines.iter().all(|l| l.get("error").is_some()
        || l.get("steps").is_some()
        || l.get("logp_policy").is_some()));
    // With the default (fail), the first bad record stops the run and is named.
    let out = padv()
        .args(["score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Line 2 is the first bad one (malformed JSON).
    assert!(
        err.contains("bad.jsonl:2: malformed JSON"),
        "error names file and line: {err}"
    );
}
