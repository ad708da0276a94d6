//! Models by Hugging Face hub id (`ORG/NAME`, optionally `@REVISION`),
//! resolved in the local cache only — padv never touches the network.
//!
//! Follows the layout `huggingface_hub` writes: the cache is `$HF_HUB_CACHE`,
//! else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; a model lives in
//! `models--ORG--NAME/`, where `refs/REVISION` (default `main`) holds a commit
//! hash and `snapshots/HASH/` the files (links into `blobs/`). A revision may
//! also be a commit hash with its snapshot present. A path that is an
//! existing directory always wins over a hub id of the same spelling.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The directory of a model given as a path or a hub id: `spec` itself when
/// it is a directory or does not look like a hub id (later loading reports
/// it), else the cached snapshot; an error saying how to fetch it when the
/// hub id is not cached.
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    let Some((org, name, revision)) = spec.to_str().and_then(parse_hub_id) else {
        return Ok(spec.to_path_buf());
    };
    let Some(cache) = cache_dir(
        std::env::var_os("HF_HUB_CACHE"),
        std::env::var_os("HF_HOME"),
        std::env::var_os("HOME"),
    ) else {
        return Err(not_cached(
            spec,
            org,
            name,
            revision,
            "no cache directory (HOME is not set)",
        ));
    };
    snapshot(&cache, spec, org, name, revision)
}

/// `ORG/NAME[@REVISION]` → its parts; `None` for anything else (an absolute
/// or relative path such as `./x/y`, more or fewer than one `/` in the id).
fn parse_hub_id(spec: &str) -> Option<(&str, &str, Option<&str>)> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        Some(_) => return None,
        None => (spec, None),
    };
    let (org, name) = id.split_once('/')?;
    let part_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (part_ok(org) && part_ok(name)).then_some((org, name, revision))
}

/// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `HOME/.cache/huggingface/hub`.
fn cache_dir(
    hf_hub_cache: Option<OsString>,
    hf_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(hf_hub_cache)
        .or_else(|| set(hf_home.clone()).map(|h| h.join("hub")))
        .or_else(|| set(home).map(|h| h.join(".cache/huggingface/hub")))
}

fn snapshot(
    cache: &Path,
    spec: &Path,
    org: &str,
    name: &str,
    revision: Option<&str>,
) -> Result<PathBuf> {
    let repo = cache.join(format!("models--{org}--{name}"));
    if !repo.is_dir() {
        let why = format!("{} has no models--{org}--{name}", cache.display());
        return Err(not_cached(spec, org, name, revision, &why));
    }
    let rev = revision.unwrap_or("main");
    // A revision names a branch, tag or commit inside the cache entry: never
    // a path out of it (`..`, an absolute path).
    let inside = |s: &str| {
        !s.is_empty()
            && Path::new(s)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if !inside(rev) {
        return Err(Error::config(
            spec,
            format!("revision `{rev}` is not a branch, tag or commit name"),
        ));
    }
    let snapshots = repo.join("snapshots");
    let hash = match std::fs::read_to_string(repo.join("refs").join(rev)) {
        Ok(hash) if !inside(hash.trim()) || hash.trim().contains('/') => {
            return Err(Error::config(
                spec,
                format!(
                    "refs/{rev} of the cached {org}/{name} does not name a commit ({:?}); fetch it \
                     again with `huggingface-cli download {org}/{name}`",
                    hash.trim()
                ),
            ));
        }
        Ok(hash) => hash.trim().to_string(),
        Err(_) if snapshots.join(rev).is_dir() => rev.to_string(),
        Err(_) => {
            let why = format!(
                "{} has no refs/{rev} or snapshots/{rev}; cached refs: {}",
                repo.display(),
                cached_refs(&repo)
            );
            return Err(not_cached(spec, org, name, revision, &why));
        }
    };
    let dir = snapshots.join(&hash);
    if !dir.is_dir() {
        return Err(Error::config(
            spec,
            format!(
                "refs/{rev} of the cached {org}/{name} names commit {hash}, but {} is missing \
                 (an interrupted download? fetch it again with `huggingface-cli download {org}/{name}`)",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// The names under `repo/refs`, for an error message.
fn cached_refs(repo: &Path) -> String {
    let mut refs: Vec<String> = std::fs::read_dir(repo.join("refs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    refs.sort();
    if refs.is_empty() {
        "none".into()
    } else {
        refs.join(", ")
    }
}

fn not_cached(spec: &Path, org: &str, name: &str, revision: Option<&str>, why: &str) -> Error {
    let rev = revision.map_or(String::new(), |r| format!(" --revision {r}"));
    Error::config(
        spec,
        format!(
            "not a directory, and not in the local Hugging Face cache ({why}); padv does not \
             download: fetch it with `huggingface-cli download {org}/{name}{rev}`"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        assert_eq!(
            parse_hub_id("Qwen/Qwen3.5-9B"),
            Some(("Qwen", "Qwen3.5-9B", None))
        );
        assert_eq!(
            parse_hub_id("org/name@v1.0"),
            Some(("org", "name", Some("v1.0")))
        );
        for path in [
            "./a/b",
            "/abs/model",
            "a/b/c",
            "model",
            "a/",
            "org/name@",
            "../x",
        ] {
            assert_eq!(parse_hub_id(path), None, "{path}");
        }
    }

    #[test]
    fn the_cache_is_hf_hub_cache_then_hf_home_then_home() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            cache_dir(s("/c"), s("/h"), s("/u")),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            cache_dir(None, s("/h"), s("/u")),
            Some(PathBuf::from("/h/hub"))
        );
        assert_eq!(
            cache_dir(s(""), None, s("/u")),
            Some(PathBuf::from("/u/.cache/huggingface/hub"))
        );
        assert_eq!(cache_dir(None, None, None), None);
    }
}
