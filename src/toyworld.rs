//! The bundled toyworld pair and demo trajectories (`assets/toyworld`), the
//! default of `padv score`, `eval` and `serve` when no models are named.
//!
//! They are compiled into the binary, so a `padv` copied to another machine
//! (a container, a GPU host, an installed wheel's CLI) runs its default
//! without the source tree. [`dir`] writes them out once per content into
//! the user's cache (`$PADV_CACHE_DIR`, else `$XDG_CACHE_HOME/padv`, else
//! `~/.cache/padv`, else the temp dir) and checks the bytes on every use: a
//! damaged or foreign copy is never read, another is written beside it.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Each bundled file, by its path under the toyworld directory.
macro_rules! bundled {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/toyworld/", $path)) as &[u8])),*]
    };
}

/// What [`dir`] writes: both checkpoints and the two demo sets.
pub const FILES: &[(&str, &[u8])] = bundled!(
    "README.md",
    "demo_ref.jsonl",
    "demo_trained.jsonl",
    "models/trained/config.json",
    "models/trained/generation_config.json",
    "models/trained/model.safetensors",
    "models/trained/special_tokens_map.json",
    "models/trained/tokenizer.json",
    "models/trained/tokenizer_config.json",
    "models/ref/config.json",
    "models/ref/generation_config.json",
    "models/ref/model.safetensors",
    "models/ref/special_tokens_map.json",
    "models/ref/tokenizer.json",
    "models/ref/tokenizer_config.json",
);

/// The directory holding the bundled files (`models/trained`, `models/ref`,
/// `demo_trained.jsonl`, `demo_ref.jsonl`), written under the user's cache
/// on first use; checked once per process.
pub fn dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let base = cache_base();
    let d = dir_under(&base).map_err(|e| Error::Io {
        source: std::io::Error::new(
            e.kind(),
            format!("writing the bundled toyworld pair: {e} (set PADV_CACHE_DIR to a writable directory)"),
        ),
        path: base,
    })?;
    Ok(DIR.get_or_init(|| d).clone())
}

/// The bundled pair: (policy, reference) checkpoint directories.
pub fn pair() -> Result<(PathBuf, PathBuf)> {
    let models = dir()?.join("models");
    Ok((models.join("trained"), models.join("ref")))
}

/// [`dir`] under `base`: `base/toyworld-<version>-<content hash>`, reused when
/// its bytes are the bundle's, else written afresh (beside a damaged copy,
/// under a name of this process's own).
pub fn dir_under(base: &Path) -> std::io::Result<PathBuf> {
    let name = format!(
        "toyworld-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        content_hash()
    );
    let target = base.join(&name);
    if holds_bundle(&target) {
        return Ok(target);
    }
    std::fs::create_dir_all(base)?;
    // Written under a unique name, then renamed into place: a concurrent
    // process sees either nothing or a whole copy.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = base.join(format!(".{name}.{}.{stamp}", std::process::id()));
    write_bundle(&tmp)?;
    if std::fs::rename(&tmp, &target).is_ok() {
        return Ok(target);
    }
    // Another process won the race with a good copy, or a damaged copy is
    // in the way: removed, then one more try.
    if !holds_bundle(&target) {
        std::fs::remove_dir_all(&target).ok();
        if std::fs::rename(&tmp, &target).is_ok() {
            return Ok(target);
        }
    }
    if holds_bundle(&target) {
        std::fs::remove_dir_all(&tmp).ok();
        return Ok(target);
    }
    // Still in the way (not ours to remove): the fresh copy serves as is.
    Ok(tmp)
}

fn cache_base() -> PathBuf {
    let env_dir = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(d) = env_dir("PADV_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = env_dir("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("padv");
    }
    if let Some(h) = env_dir("HOME") {
        return PathBuf::from(h).join(".cache/padv");
    }
    std::env::temp_dir().join("padv")
}

fn write_bundle(root: &Path) -> std::io::Result<()> {
    for (path, bytes) in FILES {
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
    }
    Ok(())
}

fn holds_bundle(root: &Path) -> bool {
    FILES
        .iter()
        .all(|(path, bytes)| std::fs::read(root.join(path)).is_ok_and(|b| b == *bytes))
}

/// FNV-1a over every file's path and bytes.
fn content_hash() -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (path, bytes) in FILES {
        for &b in path.as_bytes().iter().chain([0u8].iter()).chain(*bytes) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld")
    }

    fn fresh_base(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("padv-toyworld-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        d
    }

    #[test]
    fn the_bundle_holds_every_model_file_and_both_demos() {
        for sub in ["models/trained", "models/ref"] {
            for entry in std::fs::read_dir(source().join(sub)).unwrap() {
                let name = format!("{sub}/{}", entry.unwrap().file_name().to_string_lossy());
                assert!(
                    FILES.iter().any(|(p, _)| *p == name),
                    "{name} is in assets/toyworld but not bundled"
                );
            }
        }
        for demo in ["demo_trained.jsonl", "demo_ref.jsonl"] {
            assert!(FILES.iter().any(|(p, _)| *p == demo));
        }
    }

    #[test]
    fn written_once_reused_and_rewritten_when_damaged() {
        let base = fresh_base("rw");
        let d = dir_under(&base).unwrap();
        for (path, _) in FILES {
            assert_eq!(
                std::fs::read(d.join(path)).unwrap(),
                std::fs::read(source().join(path)).unwrap(),
                "{path}"
            );
        }
        // Reused as it is.
        let before = std::fs::metadata(d.join(FILES[0].0))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(dir_under(&base).unwrap(), d);
        let after = std::fs::metadata(d.join(FILES[0].0))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        // A damaged weight file is never read: a fresh copy takes its place.
        let w = d.join("models/ref/model.safetensors");
        std::fs::write(&w, b"not a checkpoint").unwrap();
        let again = dir_under(&base).unwrap();
        assert!(holds_bundle(&again));
        assert_ne!(
            std::fs::read(again.join("models/ref/model.safetensors")).unwrap(),
            b"not a checkpoint"
        );
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn concurrent_first_uses_all_get_a_whole_copy() {
        let base = fresh_base("race");
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| dir_under(&base).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for d in &dirs {
            assert!(holds_bundle(d), "{}", d.display());
        }
        std::fs::remove_dir_all(&base).ok();
    }
}
