//! Rendering and tokenizing a [`Record`] into an [`Encoded`]: token ids and
//! one action span per step.
//!
//! - Template mode renders the whole conversation once with the chat
//!   template, tokenizes it without adding special tokens, and finds each
//!   action's content in the render (searching after the render of the
//!   preceding messages with the generation prompt, so a short reply cannot
//!   match inside a header). Byte offsets of the tokens map that text to a
//!   token span: the content's tokens through the end-of-turn token, the
//!   first special token after the content (this takes in tool calls the
//!   template writes after the content, as in Qwen3's `<tool_call>` blocks),
//!   or the first token after the content when no special token follows
//!   before the next message. This is the span HF's `{% generation %}`
//!   assistant masks give. An action whose tool calls are not in its turn
//!   of the render (a template that ignores `tool_calls`, as SmolLM2's does)
//!   is scored without them, with a warning in [`Encoded::warnings`].
//! - Plain mode follows the paper's reference renderer (each message
//!   tokenized alone after BOS, the whole message is the action).

use minijinja::Value as TemplateValue;
use serde_json::{Map, Value};

use super::python;
use super::template::{ChatTemplate, json_to_value};
use super::{Action, Body, Chat, Encoded, Format, Message, Record, RenderMode, Warning};
use crate::tokenizer::TokenizerBundle;
use crate::{Error, Result};

/// Tokenizes `record` with `tok`, rendering chats with `render`, then keeps
/// the last `max_length` tokens (cut actions are kept, flagged `truncated`).
pub fn encode(
    record: &Record,
    tok: &TokenizerBundle,
    render: RenderMode,
    max_length: Option<usize>,
) -> Result<Encoded> {
    let mut enc = match &record.body {
        Body::Text {
            text,
            add_special_tokens,
        } => Encoded {
            token_ids: tok.encode(text, *add_special_tokens)?,
            ..Encoded::default()
        },
        Body::Tokens {
            token_ids,
            action_spans,
        } => Encoded {
            token_ids: token_ids.clone(),
            actions: action_spans
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, &(start, end))| Action {
                    message_index: i,
                    start: start.min(token_ids.len()),
                    end: end.min(token_ids.len()),
                    truncated: false,
                })
                .collect(),
            warnings: Vec::new(),
        },
        Body::Chat(chat) => match render {
            RenderMode::Template => encode_template(record, chat, tok)?,
            RenderMode::Plain => encode_plain(record, chat, tok)?,
        },
    };
    if let Some(max) = max_length {
        enc.truncate_left(max);
    }
    // The sequence's first token has no log-prob (nothing precedes it): an
    // action that opens the sequence is scored from its other tokens, as the
    // paper's shifted labels do (a plain render without BOS starts with the
    // agent's first message). One that is that token alone has no value,
    // which leaves the trajectory unscored: that is said.
    if let Some(a) = enc
        .actions
        .iter()
        .find(|a| a.start == 0 && a.len() == 1 && !a.truncated)
    {
        enc.warnings.push(Warning {
            message: Some(a.message_index),
            text: format!(
                "action {} is the sequence's first token alone, which has no log-prob (no token \
                 precedes it): the step has no value and the trajectory no score",
                a.message_index
            ),
        });
    }
    Ok(enc)
}

/// The text a record is tokenized from: the chat-template render, the plain
/// render (without BOS), or the text itself. Token records have none.
pub fn render_text(record: &Record, tok: &TokenizerBundle, render: RenderMode) -> Result<String> {
    match &record.body {
        Body::Text { text, .. } => Ok(text.clone()),
        Body::Tokens { .. } => Err(Error::input(
            &record.location,
            "token records are not rendered from text",
        )),
        Body::Chat(chat) => match render {
            RenderMode::Template => {
                let tmpl = tok.compiled_template()?;
                let (values, tools) = template_inputs(record, chat);
                render_with(record, tmpl, &values, &tools, false)
            }
            RenderMode::Plain => Ok(plain_texts(record, chat).concat()),
        },
    }
}

fn render_with(
    record: &Record,
    tmpl: &ChatTemplate,
    values: &[TemplateValue],
    tools: &TemplateValue,
    add_generation_prompt: bool,
) -> Result<String> {
    tmpl.render(values, tools, add_generation_prompt)
        .map_err(|e| Error::input(&record.location, format!("chat template: {e}")))
}

/// Messages as the template sees them, and the tools (or none).
fn template_inputs(record: &Record, chat: &Chat) -> (Vec<TemplateValue>, TemplateValue) {
    let who_and_when = record.format == Format::WhoAndWhen;
    let values = chat
        .messages
        .iter()
        .map(|m| json_to_value(&Value::Object(template_message(m, who_and_when))))
        .collect();
    let tools = chat
        .tools
        .as_ref()
        .map_or(TemplateValue::from(()), json_to_value);
    (values, tools)
}

/// The message object handed to the template: as given, with `content` a
/// string, τ²-style tool calls in OpenAI form, and (Who&When) agent roles
/// mapped onto the chat roles: `human` → `user`, other agents → `assistant`.
fn template_message(m: &Message, who_and_when: bool) -> Map<String, Value> {
    let mut obj = m.raw.clone();
    obj.insert("content".into(), Value::String(m.content.clone()));
    let raw_calls = obj
        .get("tool_calls")
        .and_then(Value::as_array)
        .filter(|calls| calls.iter().any(|c| c.get("function").is_none()))
        .cloned();
    if let Some(raw_calls) = raw_calls {
        let calls = m
            .tool_calls
            .iter()
            .zip(&raw_calls)
            .map(|(call, raw)| {
                let mut out = Map::new();
                if let Some(id) = raw.get("id") {
                    out.insert("id".into(), id.clone());
                }
                out.insert("type".into(), Value::String("function".into()));
                let mut function = Map::new();
                function.insert("name".into(), Value::String(call.name.clone()));
                function.insert("arguments".into(), call.arguments.clone());
                out.insert("function".into(), Value::Object(function));
                Value::Object(out)
            })
            .collect();
        obj.insert("tool_calls".into(), Value::Array(calls));
    }
    if who_and_when {
        let role = template_message_role(m, true).to_string();
        obj.insert("role".into(), Value::String(role));
    }
    obj
}

fn encode_template(record: &Record, chat: &Chat, tok: &TokenizerBundle) -> Result<Encoded> {
    let tmpl = tok.compiled_template()?;
    let (values, tools) = template_inputs(record, chat);
    let full = render_with(record, tmpl, &values, &tools, false)?;
    let (token_ids, offsets) = tok.encode_with_offsets(&full)?;

    // Pass 1: the byte range of each message's content in the render.
    let who_and_when = record.format == Format::WhoAndWhen;
    let mut found: Vec<Option<(usize, usize)>> = vec![None; chat.messages.len()];
    let field = if who_and_when { "history" } else { "messages" };
    let mut turn_from = vec![0; chat.messages.len()];
    let mut cursor = 0;
    for (i, m) in chat.messages.iter().enumerate() {
        let mut from = cursor;
        turn_from[i] = cursor;
        let assistant_turn = template_message_role(m, who_and_when) == "assistant";
        if m.is_action && assistant_turn {
            let prefix = render_with(record, tmpl, &values[..i], &tools, true);
            if let Ok(prefix) = prefix
                && prefix.len() >= cursor
                && full.starts_with(&prefix)
            {
                from = prefix.len();
            }
        }
        if !m.is_action && m.content.is_empty() {
            continue;
        }
        match locate(&full, from, &m.content) {
            Some(span) => {
                found[i] = Some(span);
                cursor = span.1;
            }
            None if m.is_action => {
                return Err(Error::input(
                    &record.location,
                    format!(
                        "{field}[{i}].content: not found in the chat-template render (the template rewrites or drops it); use the plain renderer"
                    ),
                ));
            }
            None => {}
        }
    }

    // Pass 2: byte ranges → token spans.
    let mut actions = Vec::new();
    let mut warnings = Vec::new();
    let mut next_token = 0;
    for (i, m) in chat.messages.iter().enumerate() {
        let Some((cs, ce)) = found[i] else { continue };
        if !m.is_action {
            continue;
        }
        let bound = found[i + 1..]
            .iter()
            .flatten()
            .map(|s| s.0)
            .find(|&s| s >= ce)
            .unwrap_or(full.len());
        let start = (next_token..offsets.len())
            .find(|&t| offsets[t].1 > cs || offsets[t].0 >= ce)
            .unwrap_or(offsets.len());
        let after = (start..offsets.len())
            .find(|&t| offsets[t].0 >= ce)
            .unwrap_or(offsets.len());
        let eot = (after..offsets.len())
            .take_while(|&t| offsets[t].0 < bound)
            .find(|&t| tok.is_special(token_ids[t]));
        let end = match eot {
            Some(t) => t + 1,
            None if after < offsets.len() => after + 1,
            None => after,
        };
        actions.push(Action {
            message_index: i,
            start,
            end,
            truncated: false,
        });
        next_token = end;
        // The turn: from the end of the previous message through the action.
        let end_byte = if end > start { offsets[end - 1].1 } else { ce };
        let turn = char_range(&full, turn_from[i].min(cs), end_byte.max(ce));
        for call in m
            .tool_calls
            .iter()
            .filter(|c| !turn.contains(c.name.as_str()))
        {
            warnings.push(Warning {
                message: Some(i),
                text: format!(
                    "{field}[{i}]: the chat template dropped the tool call `{}`, so the action \
                     is scored without it; --render plain writes the calls",
                    call.name
                ),
            });
        }
    }
    Ok(Encoded {
        token_ids,
        actions,
        warnings,
    })
}

/// `text[start..end]` widened to character boundaries (token offsets may
/// fall inside a character).
fn char_range(text: &str, mut start: usize, mut end: usize) -> &str {
    end = end.min(text.len());
    start = start.min(end);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    while !text.is_char_boundary(end) {
        end += 1;
    }
    &text[start..end]
}

fn template_message_role(m: &Message, who_and_when: bool) -> &str {
    if !who_and_when {
        return &m.role;
    }
    match m.role.to_ascii_lowercase().as_str() {
        "human" | "user" => "user",
        "system" => "system",
        "tool" => "tool",
        _ => "assistant",
    }
}

/// Where `content` (or what templates commonly make of it: stripped, or the
/// answer after a `</think>` block) first appears at or after `from`.
/// Among candidates the earliest match wins, then the longest.
fn locate(full: &str, from: usize, content: &str) -> Option<(usize, usize)> {
    let mut candidates = vec![content, python::strip(content)];
    if let Some((_, answer)) = content.rsplit_once("</think>") {
        let answer = answer.trim_start_matches('\n');
        candidates.extend([answer, python::strip(answer)]);
    }
    let hay = full.get(from..)?;
    candidates
        .into_iter()
        .filter_map(|c| hay.find(c).map(|p| (from + p, from + p + c.len())))
        .min_by_key(|&(s, e)| (s, std::cmp::Reverse(e)))
}

/// The paper's plain render, one text per message: `"[role]: content"`,
/// joined by newlines. For τ²-style chats an assistant message appends
/// `"\ntool_call(name, args)"` per call (args as Python prints them), is
/// stripped, and is `[assistant action]` when empty.
fn plain_texts(record: &Record, chat: &Chat) -> Vec<String> {
    let who_and_when = record.format == Format::WhoAndWhen;
    chat.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let sep = if i > 0 { "\n" } else { "" };
            if who_and_when || m.role != "assistant" {
                return format!("{sep}[{}]: {}", m.role, m.content);
            }
            let mut text = m.content.clone();
            if !m.tool_calls.is_empty() {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| format!("tool_call({}, {})", c.name, python::py_str(&c.arguments)))
                    .collect();
                text.push('\n');
                text.push_str(&calls.join("\n"));
            }
            let text = python::strip(&text);
            let text = if text.is_empty() {
                "[assistant action]"
            } else {
                text
            };
            format!("{sep}[assistant]: {text}")
        })
        .collect()
}

fn encode_plain(record: &Record, chat: &Chat, tok: &TokenizerBundle) -> Result<Encoded> {
    let mut token_ids: Vec<u32> = tok.bos_id().into_iter().collect();
    let mut actions = Vec::new();
    for (i, (text, m)) in plain_texts(record, chat)
        .iter()
        .zip(&chat.messages)
        .enumerate()
    {
        let start = token_ids.len();
        token_ids.extend(tok.encode(text, false)?);
        if m.is_action {
            actions.push(Action {
                message_index: i,
                start,
                end: token_ids.len(),
                truncated: false,
            });
        }
    }
    Ok(Encoded {
        token_ids,
        actions,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_prefers_the_earliest_then_longest_candidate() {
        let full = "<h>\n\nhello world<e><h>\n\n hello world <e>";
        assert_eq!(locate(full, 0, " hello world "), Some((5, 16)));
        assert_eq!(locate(full, 20, " hello world "), Some((24, 37)));
        assert_eq!(locate(full, 0, "<think>x</think>\n\nhello"), Some((5, 10)));
        assert_eq!(locate(full, 0, "absent"), None);
        assert_eq!(locate(full, 3, ""), Some((3, 3)));
    }
}
