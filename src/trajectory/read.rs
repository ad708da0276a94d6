//! Reading the input formats into [`Record`]s.
//!
//! A file is read whole. `.jsonl` files are read a line at a time; other files
//! are parsed as one JSON document (τ²-bench results, a Who&When sample, a
//! bare message list, a list or a single record) and fall back to JSONL when
//! that fails but the first line is a record object. A directory is a
//! Who&When set. Each record's fields are read by [`super::fields`]. File-level problems are the outer error; each record's own problem is
//! its own `Err` (a JSONL line that is not UTF-8 included), tagged with the
//! record's `id` when it can be read ([`crate::Error::record_id`]), so callers
//! can skip it and keep one output per input record. Blank lines are not
//! records: they give no result.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::fields::{WhoAndWhenFile, id_text, into_object, parse_record};
use super::{Format, Record};
use crate::{Error, Result};

const SPLITS: [&str; 2] = ["Hand-Crafted", "Algorithm-Generated"];
/// The fields that make an object a record, one per kind.
const RECORD_KEYS: [&str; 4] = ["text", "token_ids", "messages", "history"];

/// Reads every record of `path` (a file, or a Who&When directory).
/// `format` forces a format; `None` detects it.
pub fn read_records(path: &Path, format: Option<Format>) -> Result<Vec<Result<Record>>> {
    if path.is_dir() {
        return match format {
            None | Some(Format::WhoAndWhen) => read_who_and_when_dir(path),
            Some(f) => Err(Error::input(
                path.display().to_string(),
                format!("is a directory; only the who-and-when format reads directories, not {f}"),
            )),
        };
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let file = path.display().to_string();
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !is_jsonl {
        let not_a_document = match std::str::from_utf8(bytes) {
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(doc) => return read_document(path, &file, doc, format),
                Err(e) => format!("invalid JSON: {e}"),
            },
            Err(e) => format!(
                "invalid UTF-8 on line {} (a JSON document must be UTF-8 throughout)",
                line_at(bytes, e.valid_up_to())
            ),
        };
        let first = lines(bytes)
            .find_map(|(_, l)| std::str::from_utf8(l).ok().filter(|l| !l.trim().is_empty()));
        // Read as JSONL only when its first line is a record: a first line
        // that is a document of its own (τ²-bench's `simulations`, a list)
        // followed by more text is a damaged document, reported as such.
        let record_line = first
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .is_some_and(|v| {
                v.as_object()
                    .is_some_and(|o| !o.contains_key("simulations"))
            });
        if !record_line {
            return Err(Error::input(file, not_a_document));
        }
    }
    if matches!(format, Some(Format::Tau2)) {
        return Err(Error::input(
            file,
            "tau2 results are one JSON document with `simulations`, not JSONL",
        ));
    }
    Ok(read_jsonl(&file, bytes, format))
}

/// The lines of `bytes` with their 1-based numbers (`\n` or `\r\n` endings).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// The 1-based line number of byte `at`.
fn line_at(bytes: &[u8], at: usize) -> usize {
    1 + bytes[..at].iter().filter(|&&b| b == b'\n').count()
}

/// One result per non-blank line; a line that is not UTF-8 is that line's error.
fn read_jsonl(file: &str, bytes: &[u8], format: Option<Format>) -> Vec<Result<Record>> {
    let name = file_name(file);
    lines(bytes)
        .filter_map(|(n, line)| {
            let loc = format!("{file}:{n}");
            let line = match std::str::from_utf8(line) {
                Ok(l) if l.trim().is_empty() => return None,
                Ok(l) => l,
                Err(e) => {
                    return Some(Err(Error::input(
                        &loc,
                        format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                    )));
                }
            };
            Some(
                serde_json::from_str(line)
                    .map_err(|e| Error::input(&loc, format!("malformed JSON: {e}")))
                    .and_then(|v| into_object(v, &loc))
                    .and_then(|obj| parse_record(obj, &loc, &format!("{name}:{n}"), format, None)),
            )
        })
        .collect()
}

fn read_document(
    path: &Path,
    file: &str,
    doc: Value,
    format: Option<Format>,
) -> Result<Vec<Result<Record>>> {
    let name = file_name(file);
    match doc {
        Value::Object(obj)
            if obj.contains_key("simulations")
                && format.is_some_and(|f| f != Format::Tau2 && f != Format::Jsonl) =>
        {
            Err(Error::input(
                file,
                format!(
                    "a τ²-bench results document (it has `simulations`), not {} records; \
                     drop --format or give --format tau2",
                    format.map_or("", Format::name)
                ),
            ))
        }
        Value::Object(obj) if obj.contains_key("simulations") || format == Some(Format::Tau2) => {
            read_tau2(file, obj)
        }
        Value::Object(obj)
            if format.is_none_or(|f| f == Format::Jsonl)
                && !RECORD_KEYS.iter().any(|k| obj.contains_key(*k)) =>
        {
            let keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
            Ok(vec![Err(Error::input(
                file,
                format!(
                    "neither a record (one of `text`, `token_ids`, `messages`, `history`) nor \
                     τ²-bench results (`simulations`); its top-level keys: {}",
                    if keys.is_empty() {
                        "none".to_string()
                    } else {
                        keys.join(", ")
                    }
                ),
            ))])
        }
        Value::Object(obj) => {
            let ww = obj.contains_key("history").then(|| WhoAndWhenFile {
                split: known_split(path.parent()),
                file: name.clone(),
            });
            let stem = path
                .file_stem()
                .map_or(name.clone(), |s| s.to_string_lossy().into_owned());
            Ok(vec![parse_record(obj, file, &stem, format, ww.as_ref())])
        }
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|m| m.get("role").is_some()) =>
        {
            if let Some(f) = format.filter(|f| !matches!(f, Format::Messages | Format::Jsonl)) {
                return Err(Error::input(
                    file,
                    format!("holds a bare message list, not {f} records"),
                ));
            }
            let mut obj = Map::new();
            let stem = path
                .file_stem()
                .map_or(name, |s| s.to_string_lossy().into_owned());
            obj.insert("messages".into(), Value::Array(items));
            Ok(vec![parse_record(obj, file, &stem, format, None)])
        }
        Value::Array(items) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let loc = format!("{file}: record {i}");
                parse_record(
                    into_object(item, &loc)?,
                    &loc,
                    &format!("{name}#{i}"),
                    format,
                    None,
                )
            })
            .collect()),
        _ => Err(Error::input(
            file,
            "expected a JSON object, a list, or JSONL",
        )),
    }
}

fn read_tau2(file: &str, mut obj: Map<String, Value>) -> Result<Vec<Result<Record>>> {
    let sims = match obj.remove("simulations") {
        Some(Value::Array(sims)) => sims,
        Some(_) => return Err(Error::input(file, "`simulations` must be a list")),
        None => {
            return Err(Error::input(
                file,
                "missing `simulations` (expected τ²-bench results)",
            ));
        }
    };
    Ok(sims
        .into_iter()
        .enumerate()
        .map(|(i, sim)| {
            let label = sim
                .get("id")
                .and_then(id_text)
                .unwrap_or_else(|| format!("#{i}"));
            let loc = format!("{file}: simulation {label}");
            let obj = into_object(sim, &loc)?;
            if !obj.contains_key("messages") {
                let id = obj.get("id").and_then(id_text);
                return Err(Error::input(&loc, "missing `messages`").in_record(id));
            }
            let mut rec = parse_record(obj, &loc, &label, Some(Format::Messages), None)?;
            rec.format = Format::Tau2;
            Ok(rec)
        })
        .collect())
}

fn read_who_and_when_dir(dir: &Path) -> Result<Vec<Result<Record>>> {
    let mut files = Vec::new();
    collect_json_files(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(Error::input(
            dir.display().to_string(),
            "no .json files in this directory",
        ));
    }
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let loc = path.display().to_string();
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        let split = match rel.parent().and_then(|p| p.file_name()) {
            Some(p) => Some(p.to_string_lossy().into_owned()),
            None => dir_name.clone(),
        };
        let ww = WhoAndWhenFile {
            split,
            file: rel.to_string_lossy().into_owned(),
        };
        let stem = path
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        let rec = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(&path, e))
            .and_then(|text| {
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| Error::input(&loc, format!("malformed JSON: {e}")))
            })
            .and_then(|v| into_object(v, &loc))
            .and_then(|obj| parse_record(obj, &loc, &stem, Some(Format::WhoAndWhen), Some(&ww)));
        out.push(rec);
    }
    Ok(out)
}

/// The `.json` files under `dir`, through links; a link looping back to a
/// folder above it is an error naming it, and a file reached by two paths
/// is read once.
fn collect_json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true) {
        let entry = entry.map_err(|e| {
            let at = e.path().unwrap_or(dir).to_path_buf();
            match e.into_io_error() {
                Some(io) => Error::io(&at, io),
                None => Error::input(
                    at.display().to_string(),
                    "a link loops back to a folder above it",
                ),
            }
        })?;
        let path = entry.path();
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if entry.file_type().is_file() && is_json {
            let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
            if seen.insert(real) {
                out.push(path.to_path_buf());
            }
        }
    }
    Ok(())
}

/// The folder name when it is one of Who&When's splits.
fn known_split(parent: Option<&Path>) -> Option<String> {
    let name = parent?.file_name()?.to_string_lossy();
    SPLITS
        .iter()
        .find(|s| s.eq_ignore_ascii_case(&name))
        .map(|s| s.to_string())
}

fn file_name(file: &str) -> String {
    Path::new(file)
        .file_name()
        .map_or_else(|| file.to_string(), |n| n.to_string_lossy().into_owned())
}
