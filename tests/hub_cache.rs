//! `--policy ORG/NAME[@REV]`: a hub id resolved in a local Hugging Face cache
//! (built here in the layout `huggingface_hub` writes: refs → snapshots →
//! links into blobs), never downloaded; a clear error when it is not cached;
//! a plain directory of the same spelling wins.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli_common::{padv, succeed};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Caches `src`'s files as `org/name` at `revision`, under commit `hash`.
fn cache_model(cache: &Path, org_name: &str, revision: &str, hash: &str, src: &Path) {
    let repo = cache.join(format!("models--{}", org_name.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join(revision), hash).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let blob = format!("{hash}-{name}");
        std::fs::copy(entry.path(), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(&name))
            .unwrap();
    }
}

fn score_cmd(cache: &Path, cwd: &Path, policy: &str, reference: &str) -> Command {
    let mut cmd = padv();
    cmd.current_dir(cwd)
        .env("HF_HUB_CACHE", cache)
        .args([
            "score",
            "--device",
            "cpu",
            "--policy",
            policy,
            "--reference",
            reference,
        ])
        .arg("--input")
        .arg(fixtures().join("inputs/tiny_trajectories.jsonl"))
        .arg("--output")
        .arg(cwd.join("out.jsonl"));
    cmd
}

fn score(cache: &Path, cwd: &Path, policy: &str, reference: &str) -> Output {
    score_cmd(cache, cwd, policy, reference).output().unwrap()
}

#[test]
fn hub_ids_are_resolved_in_the_local_cache_by_revision() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let models = fixtures().join("models/llama");
    cache_model(&cache, "acme/tiny", "main", "a1b2", &models.join("trained"));
    cache_model(&cache, "acme/tiny-ref", "v1", "c3d4", &models.join("ref"));
    let out = score(&cache, dir.path(), "acme/tiny", "acme/tiny-ref@v1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scored = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(scored.lines().count() > 1);
    assert!(!scored.contains("\"error\""), "{scored}");
}

#[test]
fn a_hub_id_not_in_the_cache_is_an_error_saying_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    let out = score(&cache, dir.path(), "acme/absent", "acme/absent@v2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("acme/absent"), "{stderr}");
    assert!(
        stderr.contains("not in the local Hugging Face cache"),
        "{stderr}"
    );
    assert!(
        stderr.contains("huggingface-cli download acme/absent"),
        "{stderr}"
    );
}

#[test]
fn a_directory_spelled_like_a_hub_id_wins_over_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("empty-hub");
    std::fs::create_dir_all(&cache).unwrap();
    let models = fixtures().join("models/llama");
    for (side, name) in [("trained", "tiny"), ("ref", "tiny-ref")] {
        let local = dir.path().join("acme").join(name);
        std::fs::create_dir_all(&local).unwrap();
        for entry in std::fs::read_dir(models.join(side)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), local.join(entry.file_name())).unwrap();
        }
    }
    succeed(&mut score_cmd(
        &cache,
        dir.path(),
        "acme/tiny",
        "acme/tiny-ref",
    ));
}

#[test]
fn a_revision_or_ref_that_leaves_the_cache_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let models = fixtures().join("models/llama");
    cache_model(&cache, "acme/tiny", "main", "a1b2", &models.join("trained"));
    cache_model(&cache, "acme/tiny-ref", "main", "c3d4", &models.join("ref"));
    let refused = |policy: &str, reference: &str, needle: &str| {
        let out = score(&cache, dir.path(), policy, reference);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{policy}: {stderr}");
        assert!(stderr.contains(needle), "{policy}: {stderr}");
    };
    // `snapshots/../..` would be the cache entry itself (or any folder).
    refused(
        "acme/tiny@../../models--acme--tiny-ref/snapshots/c3d4",
        "acme/tiny-ref",
        "is not a branch, tag or commit name",
    );
    // A ref file that names no commit (an interrupted download).
    std::fs::write(cache.join("models--acme--tiny/refs/main"), "").unwrap();
    refused(
        "acme/tiny",
        "acme/tiny-ref",
        "refs/main of the cached acme/tiny does not name a commit",
    );
}
