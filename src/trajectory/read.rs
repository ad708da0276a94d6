//! Reading the input formats into [`Record`]s.
//!
//! A file is read whole. `.jsonl` files are read a line at a time; other files
//! are parsed as one JSON document (τ²-bench results, a Who&When sample, a
//! bare message list, a list or a single record) and fall back to JSONL when
//! that fails but the first line is a JSON value. A directory is a Who&When
//! set. File-level problems are the outer error; each record's own problem is
//! its own `Err` (a JSONL line that is not UTF-8 included), tagged with the
//! record's `id` when it can be read ([`crate::Error::record_id`]), so callers
//! can skip it and keep one output per input record. Blank lines are not
//! records: they give no result.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::python;
use super::{Body, Chat, Format, Message, Record, ToolCall};
use crate::{Error, Result};

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
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

/// How a Who&When file was found: its split (from the folder) and its path
/// relative to the directory read (kept as the `file` passthrough field).
struct WhoAndWhenFile {
    split: Option<String>,
    file: String,
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

fn into_object(value: Value, loc: &str) -> Result<Map<String, Value>> {
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(Error::input(
            loc,
            format!("expected a JSON object, found {}", kind(&other)),
        )),
    }
}

/// How a JSON value's type reads in an error message ("a list", "null").
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An id as text: a string, or a number that JSON parsing kept exactly (an
/// integer of 64 bits, or a float below 2^53); a longer integer, parsed as
/// a float, would come out rounded and collide with its neighbours.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_f64() && n.as_f64().is_none_or(|f| f.abs() >= 2f64.powi(53)) => {
            None
        }
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One record object → [`Record`]. `default_id` names it when it has no id;
/// `ww` is set for Who&When files. An error carries the record's `id` (or
/// Who&When's `question_ID`) when it has a readable one.
fn parse_record(
    obj: Map<String, Value>,
    loc: &str,
    default_id: &str,
    expect: Option<Format>,
    ww: Option<&WhoAndWhenFile>,
) -> Result<Record> {
    let id = ["id", "question_ID"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(id_text));
    parse_fields(obj, loc, default_id, expect, ww).map_err(|e| e.in_record(id))
}

fn parse_fields(
    mut obj: Map<String, Value>,
    loc: &str,
    default_id: &str,
    expect: Option<Format>,
    ww: Option<&WhoAndWhenFile>,
) -> Result<Record> {
    let found = if obj.contains_key("history") {
        Format::WhoAndWhen
    } else if obj.contains_key("messages") {
        Format::Messages
    } else if obj.contains_key("token_ids") {
        Format::Tokens
    } else if obj.contains_key("text") {
        Format::Text
    } else {
        let want = match expect {
            Some(Format::WhoAndWhen) => "`history`",
            Some(Format::Messages | Format::Tau2) => "`messages`",
            Some(Format::Tokens) => "`token_ids`",
            Some(Format::Text) => "`text`",
            _ => "one of `text`, `token_ids`, `messages`, `history`",
        };
        return Err(Error::input(loc, format!("missing {want}")));
    };
    if let Some(want) = expect.filter(|f| !matches!(f, Format::Jsonl | Format::Tau2))
        && want != found
    {
        return Err(Error::input(
            loc,
            format!("expected a {want} record (--format {want}) but this is a {found} record"),
        ));
    }
    let id = match obj.shift_remove("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(id_text(&v).ok_or_else(|| {
            Error::input(
                loc,
                match v {
                    Value::Number(n) => format!(
                        "id: {n} is a number too large to keep exactly (integers beyond 64 bits \
                         are read as rounded floats); give the id as a string"
                    ),
                    _ => format!("id: must be a string or a number, found {}", kind(&v)),
                },
            )
        })?),
    };
    let body = match found {
        Format::Text => parse_text(&mut obj, loc)?,
        Format::Tokens => parse_tokens(&mut obj, loc)?,
        Format::WhoAndWhen => parse_chat(&mut obj, loc, "history", ww)?,
        _ => parse_chat(&mut obj, loc, "messages", None)?,
    };
    check_labels(&obj, &body, loc)?;
    let id = id
        .or_else(|| obj.get("question_ID").and_then(id_text))
        .unwrap_or_else(|| default_id.to_string());
    if let Some(ww) = ww {
        if let Some(split) = &ww.split
            && !obj.contains_key("split")
        {
            obj.insert("split".into(), Value::String(split.clone()));
        }
        if !ww.file.is_empty() && !obj.contains_key("file") {
            obj.insert("file".into(), Value::String(ww.file.clone()));
        }
    }
    Ok(Record {
        id,
        location: loc.to_string(),
        format: found,
        body,
        passthrough: obj,
    })
}

/// A label naming a step that is not there is an error for the record:
/// `failure_step` (0-based among the action steps) and `mistake_step` (0-based
/// into the messages, Who&When's `history`). Values that are not indices are
/// left for the applications to report.
fn check_labels(obj: &Map<String, Value>, body: &Body, loc: &str) -> Result<()> {
    let (actions, messages) = match body {
        Body::Chat(chat) => (
            chat.messages.iter().filter(|m| m.is_action).count(),
            Some(chat.messages.len()),
        ),
        Body::Tokens { action_spans, .. } => (action_spans.as_ref().map_or(0, Vec::len), None),
        Body::Text { .. } => (0, None),
    };
    let label = |field: &str| obj.get(field).and_then(json_index);
    if let Some(step) = label("failure_step")
        && step >= actions
    {
        return Err(Error::input(
            loc,
            format!("failure_step: {step} is past the record's {actions} action steps (0-based)"),
        ));
    }
    if let Some(step) = label("mistake_step") {
        let n = messages.unwrap_or(0);
        if step >= n {
            return Err(Error::input(
                loc,
                format!("mistake_step: {step} is past the record's {n} messages (0-based)"),
            ));
        }
    }
    Ok(())
}

/// A non-negative integer, also written as a float (`3.0`) or a string
/// (`"3"`, as Who&When writes `mistake_step`); `None` for anything else.
pub(crate) fn json_index(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|u| u as usize).or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15)
                .map(|f| f as usize)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_text(obj: &mut Map<String, Value>, loc: &str) -> Result<Body> {
    let text = match obj.shift_remove("text") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => return Err(Error::input(loc, "text: empty")),
        Some(v) => {
            return Err(Error::input(
                loc,
                format!("text: must be a string, found {}", kind(&v)),
            ));
        }
        None => return Err(Error::input(loc, "missing `text`")),
    };
    let add_special_tokens = match obj.shift_remove("add_special_tokens") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(v) => {
            return Err(Error::input(
                loc,
                format!(
                    "add_special_tokens: must be true or false, found {}",
                    kind(&v)
                ),
            ));
        }
    };
    Ok(Body::Text {
        text,
        add_special_tokens,
    })
}

fn parse_tokens(obj: &mut Map<String, Value>, loc: &str) -> Result<Body> {
    let ids = match obj.shift_remove("token_ids") {
        Some(Value::Array(ids)) => ids,
        Some(v) => {
            return Err(Error::input(
                loc,
                format!("token_ids: must be a list, found {}", kind(&v)),
            ));
        }
        None => return Err(Error::input(loc, "missing `token_ids`")),
    };
    if ids.is_empty() {
        return Err(Error::input(loc, "token_ids: empty trajectory"));
    }
    let token_ids = ids
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    Error::input(
                        loc,
                        format!("token_ids[{i}]: expected a token id (integer 0..2^32), found {v}"),
                    )
                })
        })
        .collect::<Result<Vec<u32>>>()?;
    let action_spans = match obj.shift_remove("action_spans") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_spans(&v, token_ids.len(), loc)?),
    };
    Ok(Body::Tokens {
        token_ids,
        action_spans,
    })
}

/// `[[start, end), ...]` in bounds, non-empty, sorted and disjoint.
fn parse_spans(v: &Value, n_tokens: usize, loc: &str) -> Result<Vec<(usize, usize)>> {
    let list = v.as_array().ok_or_else(|| {
        Error::input(
            loc,
            format!(
                "action_spans: must be a list of [start, end] pairs, found {}",
                kind(v)
            ),
        )
    })?;
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(list.len());
    for (i, pair) in list.iter().enumerate() {
        let field = format!("action_spans[{i}]");
        let (start, end) = match pair.as_array().map(Vec::as_slice) {
            Some([s, e]) => match (s.as_u64(), e.as_u64()) {
                (Some(s), Some(e)) => (s as usize, e as usize),
                _ => {
                    return Err(Error::input(
                        loc,
                        format!(
                            "{field}: start and end must be non-negative integers, found {pair}"
                        ),
                    ));
                }
            },
            _ => {
                return Err(Error::input(
                    loc,
                    format!("{field}: must be a [start, end] pair, found {pair}"),
                ));
            }
        };
        if start >= end {
            return Err(Error::input(
                loc,
                format!("{field}: [{start}, {end}) is empty or reversed (start must be < end)"),
            ));
        }
        if end > n_tokens {
            return Err(Error::input(
                loc,
                format!("{field}: [{start}, {end}) ends past the {n_tokens} token ids"),
            ));
        }
        if let Some(&(ps, pe)) = spans.last()
            && start < pe
        {
            return Err(Error::input(
                loc,
                format!(
                    "{field}: [{start}, {end}) overlaps or precedes action_spans[{}] = [{ps}, {pe}) (spans must be sorted and disjoint)",
                    i - 1
                ),
            ));
        }
        spans.push((start, end));
    }
    Ok(spans)
}

/// `messages` (or Who&When's `history`) → [`Chat`]. `ww` switches on the
/// Who&When rules: any role, and every non-empty message is an action except
/// the opening human turn of the Hand-Crafted split.
fn parse_chat(
    obj: &mut Map<String, Value>,
    loc: &str,
    field: &str,
    ww: Option<&WhoAndWhenFile>,
) -> Result<Body> {
    let who_and_when = field == "history";
    let list = match obj.shift_remove(field) {
        Some(Value::Array(list)) => list,
        Some(v) => {
            return Err(Error::input(
                loc,
                format!("{field}: must be a list of messages, found {}", kind(&v)),
            ));
        }
        None => return Err(Error::input(loc, format!("missing `{field}`"))),
    };
    if list.is_empty() {
        return Err(Error::input(
            loc,
            format!("{field}: empty trajectory (no messages)"),
        ));
    }
    let split = obj
        .get("split")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| ww.and_then(|w| w.split.clone()));
    let hand_crafted = split.is_some_and(|s| s.eq_ignore_ascii_case("Hand-Crafted"));
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let at = format!("{field}[{i}]");
        let raw = into_object(m, loc)
            .map_err(|_| Error::input(loc, format!("{at}: must be an object")))?;
        let mut msg = parse_message(raw, loc, &at, who_and_when)?;
        msg.is_action = if who_and_when {
            let opening_human = hand_crafted && i == 0 && msg.role.eq_ignore_ascii_case("human");
            !opening_human && !python::strip(&msg.content).is_empty()
        } else {
            msg.role == "assistant"
        };
        messages.push(msg);
    }
    let tools = obj.get("tools").filter(|t| t.is_array()).cloned();
    Ok(Body::Chat(Chat { messages, tools }))
}

fn parse_message(raw: Map<String, Value>, loc: &str, at: &str, any_role: bool) -> Result<Message> {
    let role = match raw.get("role") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        Some(v) if !v.is_string() => {
            return Err(Error::input(
                loc,
                format!("{at}.role: must be a string, found {}", kind(v)),
            ));
        }
        _ => match raw.get("name").and_then(Value::as_str) {
            Some(name) if any_role && !name.is_empty() => name.to_string(),
            _ => return Err(Error::input(loc, format!("{at}.role: missing"))),
        },
    };
    if !any_role && !ROLES.contains(&role.as_str()) {
        return Err(Error::input(
            loc,
            format!("{at}.role: unknown role `{role}` (expected system, user, assistant or tool)"),
        ));
    }
    let tool_calls = match raw.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(j, c)| parse_tool_call(c, loc, &format!("{at}.tool_calls[{j}]")))
            .collect::<Result<_>>()?,
        Some(v) => {
            return Err(Error::input(
                loc,
                format!("{at}.tool_calls: must be a list, found {}", kind(v)),
            ));
        }
    };
    let content = match raw.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => join_text_parts(parts, loc, at)?,
        None | Some(Value::Null)
            if !tool_calls.is_empty() || (any_role && raw.contains_key("content")) =>
        {
            String::new()
        }
        None => {
            return Err(Error::input(
                loc,
                format!("{at}.content: missing (only a message with tool_calls may omit it)"),
            ));
        }
        Some(Value::Null) => {
            return Err(Error::input(
                loc,
                format!("{at}.content: null (only a message with tool_calls may have no content)"),
            ));
        }
        Some(v) => {
            return Err(Error::input(
                loc,
                format!("{at}.content: must be a string, found {}", kind(v)),
            ));
        }
    };
    let name = raw.get("name").and_then(Value::as_str).map(str::to_string);
    Ok(Message {
        role,
        content,
        tool_calls,
        name,
        is_action: false,
        raw,
    })
}

/// OpenAI content parts: the `text` of each `{"type": "text"}` part, joined.
fn join_text_parts(parts: &[Value], loc: &str, at: &str) -> Result<String> {
    let mut out = String::new();
    for (k, part) in parts.iter().enumerate() {
        match part.get("text").and_then(Value::as_str) {
            Some(t)
                if part
                    .get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "text") =>
            {
                out.push_str(t)
            }
            _ => {
                return Err(Error::input(
                    loc,
                    format!(
                        "{at}.content[{k}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// An OpenAI call `{"function": {"name", "arguments"}}` or a τ²-bench call
/// `{"name", "arguments"}`; absent arguments are `{}`.
fn parse_tool_call(c: &Value, loc: &str, at: &str) -> Result<ToolCall> {
    let f = c.get("function").filter(|f| f.is_object()).unwrap_or(c);
    let name = match f.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => {
            return Err(Error::input(
                loc,
                format!("{at}.name: missing (expected a string)"),
            ));
        }
    };
    let arguments = f
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    Ok(ToolCall { name, arguments })
}

/// One record given as a JSON value (a request body, a library caller's
/// object): any record kind `read_records` accepts in a JSONL line.
/// `location` names it in errors (e.g. `request: trajectories[3]`).
pub fn record_from_json(value: Value, location: &str) -> Result<Record> {
    let obj = into_object(value, location)?;
    parse_record(obj, location, location, None, None)
}
