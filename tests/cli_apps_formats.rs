//! `select`, `attribute` and `eval --report` run on every input format
//! (messages JSONL, τ²-bench JSON, Who&When directory, token records),
//! scoring raw trajectories with a tiny pair first, and on `padv score`
//! output without any model.

mod cli_common;

use std::path::{Path, PathBuf};

use cli_common::{padv, pair_args, succeed};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `padv <args[0]>` with the qwen3 fixture pair, then the other arguments.
fn with_pair(args: &[&str], extra: &[&Path]) -> (bool, String, String) {
    let models = root().join("models/qwen3");
    let mut c = padv();
    c.arg(args[0]).args(pair_args(&models));
    c.args(&args[1..]);
    for e in extra {
        c.arg(e);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apps_run_on_every_input_format() {
    let f = root().join("formats");
    let dir = tempfile::tempdir().unwrap();
    for (name, input) in [
        ("messages", f.join("messages.jsonl")),
        ("tau2", f.join("tau2_results.json")),
        ("who_and_when", f.join("who_and_when")),
        ("tokens", f.join("tokens.jsonl")),
    ] {
        let json = dir.path().join(format!("{name}.json"));
        let html = dir.path().join(format!("{name}.html"));
        let (ok, stdout, err) = with_pair(
            &["eval", "--device", "cpu", "--on-error", "skip", "--input"],
            &[
                &input,
                Path::new("--json"),
                &json,
                Path::new("--report"),
                &html,
            ],
        );
        assert!(ok, "eval {name}: {err}");
        assert!(stdout.contains("progress_advantage"), "{name}: {stdout}");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for key in ["uncertainty", "best_of_n", "attribution"] {
            assert!(v.get(key).is_some(), "{name}: {key} in {v}");
        }
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.contains("<svg"), "{name}: charts");
        for fetch in [
            "src=\"http",
            "href=\"http",
            "<script src",
            "<link",
            "url(http",
        ] {
            assert!(
                !page.contains(fetch),
                "{name}: self-contained report, found {fetch}"
            );
        }

        let (ok, stdout, err) = with_pair(
            &[
                "attribute",
                "--device",
                "cpu",
                "--on-error",
                "skip",
                "--input",
            ],
            &[&input],
        );
        assert!(ok, "attribute {name}: {err}");
        assert!(stdout.lines().count() >= 1, "{name}");

        let (ok, _, err) = with_pair(
            &[
                "select",
                "--device",
                "cpu",
                "--on-error",
                "skip",
                "--explain",
                "--group-by",
                "id",
                "--input",
            ],
            &[&input],
        );
        assert!(ok, "select {name}: {err}");
    }
}

#[test]
fn apps_read_scored_output_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let scored = dir.path().join("scored.jsonl");
    let input = root().join("formats/tau2_results.json");
    let (ok, _, err) = with_pair(
        &[
            "score",
            "--device",
            "cpu",
            "--tokens",
            "--on-error",
            "skip",
            "--input",
        ],
        &[&input, Path::new("--output"), &scored],
    );
    assert!(ok, "{err}");
    let out = succeed(padv().args(["eval", "--sweep", "--input"]).arg(&scored));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bottom10") && text.contains("last"),
        "sweep covers every aggregation: {text}"
    );
    let out = succeed(padv().args(["select", "--input"]).arg(&scored));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "two scorable tasks (the third record is an error record)"
    );
}
