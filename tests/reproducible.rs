//! The same input and settings give byte-identical output, run after run and
//! for any thread count: the LM head folds fixed vocabulary ranges and merges
//! them in order, attention tasks and GEMM tiles never split a reduction
//! across threads. Checked on the embedded toyworld demo and on a fixture
//! pair's long records (where `--no-prefix-cache` gives the same bytes too).

mod cli_common;

use std::path::Path;

use cli_common::{padv, succeed};

fn score(threads: &str, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    succeed(
        padv()
            .env("RAYON_NUM_THREADS", threads)
            .args(["score", "--device", "cpu", "--tokens", "--output"])
            .arg(&out)
            .args(extra),
    );
    std::fs::read(&out).unwrap()
}

fn assert_reproducible(what: &str, extra: &[&str]) {
    let first = score("2", extra);
    assert!(!first.is_empty(), "{what}: no output");
    for (threads, run) in [
        ("2", "a second run"),
        ("1", "one thread"),
        ("3", "three threads"),
    ] {
        let again = score(threads, extra);
        assert!(first == again, "{what}: {run} differs from the first run");
    }
}

#[test]
fn the_toyworld_demo_scores_to_the_same_bytes_every_run_and_thread_count() {
    assert_reproducible("toyworld", &[]);
}

#[test]
fn long_records_score_to_the_same_bytes_with_and_without_the_cache() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let models = root.join("models/gemma4");
    let input = root.join("inputs/long_trajectories.jsonl");
    let (p, r, i) = (
        models.join("trained"),
        models.join("ref"),
        input.to_str().unwrap().to_string(),
    );
    let args = [
        "--policy",
        p.to_str().unwrap(),
        "--reference",
        r.to_str().unwrap(),
        "--input",
        &i,
    ];
    assert_reproducible("gemma4 long", &args);
    let mut off = args.to_vec();
    off.push("--no-prefix-cache");
    assert!(
        score("2", &args) == score("2", &off),
        "the prefix cache changed the output"
    );
}
