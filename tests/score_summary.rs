//! `padv score` ends with a summary: records, steps, tokens, tokens/s,
//! errors and warnings, and the prefix cache's hit rate only when records
//! shared a prefix; on stderr when `--output` is used, after the tables
//! otherwise.

mod cli_common;

use std::path::Path;

use cli_common::{padv, succeed};

fn demo_line(k: usize) -> String {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/demo_trained.jsonl");
    std::fs::read_to_string(demo)
        .unwrap()
        .lines()
        .nth(k)
        .unwrap()
        .to_string()
}

/// `padv score` on `lines`, written to a file; its stderr.
fn score_to_file(lines: &[String], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = succeed(
        padv()
            .args(["score", "--device", "cpu", "--on-error", "skip"])
            .args(extra)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dir.path().join("out.jsonl")),
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_run_to_a_file_ends_with_a_summary_on_stderr() {
    let lines = vec![
        demo_line(0),
        demo_line(1),
        r#"{"id": "e", "text": ""}"#.into(),
    ];
    let stderr = score_to_file(&lines, &[]);
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    assert!(summary.contains("summary: 3 records, "), "{summary}");
    assert!(summary.contains(" steps, "), "{summary}");
    assert!(
        summary.contains("tokens/s); 1 errors, 0 warnings"),
        "{summary}"
    );
}

#[test]
fn the_cache_hit_rate_is_reported_only_when_records_shared_a_prefix() {
    let alone = score_to_file(&[demo_line(0)], &[]);
    assert!(!alone.contains("prefix cache"), "{alone}");
    let shared = score_to_file(&[demo_line(0), demo_line(0), demo_line(0)], &[]);
    assert!(shared.contains("prefix cache: "), "{shared}");
    assert!(shared.contains("% of tokens reused"), "{shared}");
}

#[test]
fn the_tables_end_with_the_summary() {
    let out = succeed(padv().args(["score", "--device", "cpu"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .trim_end()
        .lines()
        .rev()
        .find(|l| l.starts_with("summary: "));
    assert!(last.is_some_and(|l| l.contains(" records, ")), "{stdout}");
}
