//! A chat template that ignores `tool_calls` (the toyworld pair's, like
//! SmolLM2's) would score an action without its calls: `padv score` says so
//! per record and message, counts it in the summary and suggests
//! `--render plain`; `--strict` makes it the record's error.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_common::padv;
use serde_json::{Value, json};

fn input(dir: &Path) -> PathBuf {
    let call = json!({"type": "function", "function": {"name": "open_door", "arguments": "{}"}});
    let record = json!({"id": "t1", "messages": [
        {"role": "system", "content": "get the key , then open the door ."},
        {"role": "user", "content": "start . at 1 0 ."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "door open ."},
        {"role": "assistant", "content": "go north"}
    ]});
    let path = dir.join("in.jsonl");
    std::fs::write(&path, format!("{record}\n")).unwrap();
    path
}

fn score(extra: &[&str]) -> (Output, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let run = padv()
        .args(["score", "--device", "cpu", "--on-error", "skip"])
        .args(extra)
        .arg("--input")
        .arg(input(dir.path()))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let lines = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (run, lines)
}

#[test]
fn a_template_that_drops_tool_calls_is_reported_per_record_and_in_the_summary() {
    let (run, lines) = score(&[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    for part in [
        "in.jsonl:1",
        "t1",
        "messages[2]",
        "dropped the tool call `open_door`",
        "--render plain",
    ] {
        assert!(warning.contains(part), "{part}: {warning}");
    }
    assert!(stderr.contains("0 errors, 1 warnings"), "{stderr}");
    assert_eq!(lines[0]["warnings"].as_array().map(Vec::len), Some(1));
    // The step of message 2 carries it too; the other steps nothing.
    for step in lines[0]["steps"].as_array().unwrap() {
        let own = step.get("warnings").map(|w| w.as_array().unwrap().len());
        let want = (step["message"] == 2).then_some(1);
        assert_eq!(own, want, "{step}");
    }
    assert!(lines[0]["score"].is_number());
}

#[test]
fn the_plain_renderer_keeps_the_calls_and_warns_about_nothing() {
    let (run, lines) = score(&["--render", "plain"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert!(stderr.contains("0 errors, 0 warnings"), "{stderr}");
    assert!(lines[0].get("warnings").is_none());
}

#[test]
fn strict_makes_a_dropped_tool_call_the_records_error() {
    let (run, lines) = score(&["--strict"]);
    assert!(run.status.success());
    let e = lines[0]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", lines[0]));
    assert!(
        e.contains("dropped the tool call `open_door`") && e.contains("--strict"),
        "{e}"
    );
    assert_eq!(lines[0]["id"], "t1");
}

#[test]
fn a_template_that_writes_tool_calls_gives_no_warning() {
    use padv::tokenizer::TokenizerBundle;
    use padv::trajectory::{RenderMode, encode, read_records};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let records = read_records(&root.join("formats/tau2_results.json"), None).unwrap();
    let with_calls = |r: &padv::trajectory::Record| {
        r.messages()
            .is_some_and(|ms| ms.iter().any(|m| !m.tool_calls.is_empty()))
    };
    // Qwen3's template writes `<tool_call>` blocks (Llama 3.0's, in the
    // llama3 fixture, ignores tool calls and is rightly warned about).
    let tok = TokenizerBundle::load(root.join("tokenizers/qwen3")).unwrap();
    let mut checked = 0;
    for r in records.iter().flatten().filter(|r| with_calls(r)) {
        let enc = encode(r, &tok, RenderMode::Template, None).unwrap();
        assert!(enc.warnings.is_empty(), "{}: {:?}", r.id, enc.warnings);
        checked += 1;
    }
    assert!(checked > 0);
}

/// The llama fixture pair without `tokenizer_config.json` (so without a chat
/// template); `padv score`'s stderr on the fixture inputs.
fn score_without_template(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    for side in ["trained", "ref"] {
        let to = dir.path().join(side);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(models.join(side)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "tokenizer_config.json" {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let run = padv()
        .args(["score", "--device", "cpu", "--policy"])
        .arg(dir.path().join("trained"))
        .arg("--reference")
        .arg(dir.path().join("ref"))
        .args(extra)
        .arg("--input")
        .arg(models.join("../../inputs/tiny_trajectories.jsonl"))
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_policy_without_a_chat_template_is_said_to_be_rendered_plain() {
    let stderr = score_without_template(&[]);
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains("has no chat template") && warning.contains("--render plain"),
        "{warning}"
    );
    let asked = score_without_template(&["--render", "plain"]);
    assert!(!asked.contains("warning:"), "{asked}");
}
