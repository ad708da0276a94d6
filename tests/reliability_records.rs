//! No record is lost: `padv score` writes records as they complete (a failure
//! keeps everything before it), a line that is not UTF-8 is that line's
//! error, error records keep the record's id, and the applications honour
//! `--on-error skip` on damaged scored files.

mod cli_common;

use std::path::{Path, PathBuf};

use cli_common::{padv, succeed};
use serde_json::Value;

fn demo_lines(n: usize) -> Vec<String> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/demo_trained.jsonl");
    std::fs::read_to_string(demo)
        .unwrap()
        .lines()
        .take(n)
        .map(str::to_string)
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `padv score --on-error skip` from `input`; the lines it wrote.
fn score_skipping(input: &Path) -> Vec<Value> {
    let out = input.with_extension("out.jsonl");
    succeed(
        padv()
            .args(["score", "--device", "cpu", "--on-error", "skip", "--input"])
            .arg(input)
            .arg("--output")
            .arg(&out),
    );
    output_lines(&out)
}

fn output_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_failing_record_keeps_every_record_scored_before_it_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = demo_lines(72);
    lines.insert(70, r#"{"id": "bad", "messages": 3}"#.to_string());
    let input = write(dir.path(), "in.jsonl", lines.join("\n").as_bytes());
    let out = dir.path().join("out.jsonl");
    let run = padv()
        .args(["score", "--device", "cpu", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("in.jsonl:71"), "{stderr}");
    let written = output_lines(&out);
    assert_eq!(written.len(), 70);
    assert!(written.iter().all(|r| r["steps"].is_array()));
}

#[test]
fn a_line_that_is_not_utf8_is_an_error_record_and_the_others_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    let lines = demo_lines(3);
    let mut bytes = format!("{}\n", lines[0]).into_bytes();
    bytes.extend(b"{\"id\": \"x\xff\", \"text\": \"caf\xe9\"}\n");
    bytes.extend(format!("{}\n\n{}\n", lines[1], lines[2]).as_bytes());
    let input = write(dir.path(), "in.jsonl", &bytes);
    let written = score_skipping(&input);
    // One line per non-blank input line (line 4 is blank).
    assert_eq!(written.len(), 4);
    let e = written[1]["error"].as_str().unwrap();
    assert!(e.contains("in.jsonl:2") && e.contains("UTF-8"), "{e}");
    assert!([0, 2, 3].iter().all(|&i| written[i]["steps"].is_array()));
}

#[test]
fn error_records_keep_the_id_of_the_record_they_stand_for() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"id": "x7", "messages": "oops"}"#,
        r#"{"id": 12, "text": ""}"#,
        r#"{"messages": []}"#,
    ];
    let input = write(dir.path(), "in.jsonl", lines.join("\n").as_bytes());
    let ids: Vec<Value> = score_skipping(&input)
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [Value::from("x7"), Value::from("12"), Value::Null]);
}

#[test]
fn a_repeated_id_is_a_warning_on_the_record_that_repeats_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = demo_lines(3);
    let mut third: Value = serde_json::from_str(&lines[2]).unwrap();
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    third["id"] = first["id"].clone();
    lines[2] = third.to_string();
    let input = write(dir.path(), "in.jsonl", lines.join("\n").as_bytes());
    let out = dir.path().join("out.jsonl");
    let run = succeed(
        padv()
            .args(["score", "--device", "cpu", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&out),
    );
    let written = output_lines(&out);
    assert_eq!(written.len(), 3, "the record is scored all the same");
    assert!(written[..2].iter().all(|r| r.get("warnings").is_none()));
    let w = written[2]["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("is also the id of") && w.contains("in.jsonl:1"),
        "{w}"
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("in.jsonl:3 (id") && stderr.contains("1 warnings"),
        "{stderr}"
    );
}

/// The scored demo with a first line that is not JSON and a line that is
/// not UTF-8.
fn damaged_scored_file(dir: &Path) -> PathBuf {
    let scored = dir.join("scored.jsonl");
    succeed(
        padv()
            .args(["score", "--device", "cpu", "--output"])
            .arg(&scored),
    );
    let good = std::fs::read(&scored).unwrap();
    let mut bytes = b"{not json\n{\"id\": \"\xff\"}\n".to_vec();
    bytes.extend(good);
    write(dir, "damaged.jsonl", &bytes)
}

#[test]
fn eval_select_and_attribute_honour_on_error_skip_on_damaged_scored_files() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = damaged_scored_file(dir.path());
    let out = succeed(
        padv()
            .args(["eval", "--on-error", "skip", "--input"])
            .arg(&damaged),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 error records skipped"), "{stdout}");
    succeed(
        padv()
            .args(["select", "--on-error", "skip", "--input"])
            .arg(&damaged),
    );
    let out = succeed(
        padv()
            .args(["attribute", "--on-error", "skip", "--input"])
            .arg(&damaged),
    );
    assert!(!out.stdout.is_empty());

    let run = padv()
        .args(["eval", "--input"])
        .arg(&damaged)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("damaged.jsonl:1: invalid JSON"), "{stderr}");
}
