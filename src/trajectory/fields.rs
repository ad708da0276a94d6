//! One record object → [`Record`]: the fields of each record kind (text,
//! token ids with action spans, a chat, a Who&When history), their labels,
//! and the errors a bad field gives, each naming the record's place and the
//! field (`messages[3].role: unknown role …`).

use serde_json::{Map, Value};

use super::python;
use super::{Body, Chat, Format, Message, Record, ToolCall};
use crate::{Error, Result};

/// The message roles a chat may hold.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// How a Who&When file was found: its split (from the folder) and its path
/// relative to the directory read (kept as the `file` passthrough field).
pub(super) struct WhoAndWhenFile {
    pub(super) split: Option<String>,
    pub(super) file: String,
}

pub(super) fn into_object(value: Value, loc: &str) -> Result<Map<String, Value>> {
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(Error::input(
            loc,
            format!("expected a JSON object, found {}", kind(&other)),
        )),
    }
}

/// How a JSON value's type reads in an error message ("a list", "null").
pub fn kind(v: &Value) -> &'static str {
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
pub(super) fn id_text(v: &Value) -> Option<String> {
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
pub(super) fn parse_record(
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
