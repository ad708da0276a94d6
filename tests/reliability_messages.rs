//! Error messages that say what is wrong: an OS error said once, a JSON
//! document that is neither a record nor τ²-bench results named as such,
//! and a `tokenizer.json` that cannot be read not called "not found".

mod cli_common;

use cli_common::padv;

fn stderr_of(args: &[&std::ffi::OsStr]) -> String {
    let out = padv().args(args).output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `padv score` with `model` as policy and reference; its stderr.
fn score_pair(model: &std::path::Path) -> String {
    let pair = [
        "--policy".as_ref(),
        model.as_os_str(),
        "--reference".as_ref(),
        model.as_os_str(),
    ];
    stderr_of(&[&["score".as_ref()], &pair[..]].concat())
}

#[test]
fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.jsonl");
    let stderr = stderr_of(&["score".as_ref(), "--input".as_ref(), missing.as_os_str()]);
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
    assert!(stderr.contains("absent.jsonl"), "{stderr}");
}

#[test]
fn a_tau2_file_without_simulations_is_not_called_a_record_missing_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.json");
    std::fs::write(&path, r#"{"tasks": [], "info": {"agent": "x"}}"#).unwrap();
    let stderr = stderr_of(&["score".as_ref(), "--input".as_ref(), path.as_os_str()]);
    assert!(
        stderr.contains("`simulations`") && stderr.contains("top-level keys: tasks, info"),
        "{stderr}"
    );
}

#[test]
fn a_tokenizer_json_that_cannot_be_read_is_not_called_missing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let tok = model.join("tokenizer.json");
    std::os::unix::fs::symlink(&tok, &tok).unwrap();
    let stderr = score_pair(&model);
    assert!(!stderr.contains("not found"), "{stderr}");
    assert!(
        stderr.contains("tokenizer.json") && stderr.contains("symbolic links"),
        "{stderr}"
    );
}

#[test]
fn a_checkpoint_directory_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("no-such-model");
    let stderr = score_pair(&absent);
    let shown = format!("{}: No such file or directory", absent.display());
    assert!(stderr.contains(&shown), "{stderr}");
}
