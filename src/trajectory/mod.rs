//! Trajectories in, token ids and action spans out: the first stage of the
//! data path.
//!
//! - [`read_records`] reads one of the input formats ([`Format`]: text /
//!   token-id records, OpenAI-style messages JSONL, τ²-bench (and WebShop)
//!   results, Who&When, token records with action spans), auto-detected unless
//!   forced, into one `Result<Record>` per input record, so a bad record is an
//!   error naming its `file:line` and field while the others go on.
//! - [`encode`] renders a record ([`RenderMode`]: the checkpoint's chat
//!   template, or the paper's plain `[role]: content` form) and tokenizes it
//!   into an [`Encoded`]: token ids plus one [`Action`] span per step.
//!
//! Every field of an input record that is not consumed here is kept, in
//! order, in [`Record::passthrough`] for the output.

mod fields;
mod python;
mod read;
mod render;
pub(crate) mod template;

use std::str::FromStr;

use serde_json::{Map, Value};

pub(crate) use fields::json_index;
pub use fields::kind as json_kind;
pub use fields::{ROLES, record_from_json};
pub use read::read_records;
pub use render::{encode, render_text};

use crate::{Error, Result};

/// An input format. Auto-detection picks one per file (τ²-bench, Who&When)
/// or per line (the JSONL kinds); forcing one makes every record of another
/// kind an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSONL with any mix of the record kinds below (one per line).
    Jsonl,
    /// `{"id", "text", "add_special_tokens"?}`.
    Text,
    /// `{"id"?, "messages": [{"role", "content", "tool_calls"?, "name"?}], ...}`;
    /// also a JSON file holding a bare list of messages.
    Messages,
    /// τ²-bench / WebShop results: `{"simulations": [{"id", "task_id", "messages", "reward_info"}]}`.
    Tau2,
    /// Who&When: `{"question", "history": [...], "mistake_step", ...}`, a file or
    /// a directory of them (subfolder names are the `split`).
    WhoAndWhen,
    /// `{"id", "token_ids": [...], "action_spans"?: [[start, end), ...]}`.
    Tokens,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Jsonl,
        Format::Text,
        Format::Messages,
        Format::Tau2,
        Format::WhoAndWhen,
        Format::Tokens,
    ];

    /// The name used by `--format`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Text => "text",
            Format::Messages => "messages",
            Format::Tau2 => "tau2",
            Format::WhoAndWhen => "who-and-when",
            Format::Tokens => "tokens",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace(['_', '&'], "-");
        Ok(match key.as_str() {
            "jsonl" | "records" => Format::Jsonl,
            "text" => Format::Text,
            "messages" | "chat" => Format::Messages,
            "tau2" | "tau2-bench" | "webshop" => Format::Tau2,
            "who-and-when" | "whoandwhen" | "who-when" | "whowhen" => Format::WhoAndWhen,
            "tokens" | "token-ids" => Format::Tokens,
            _ => {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                return Err(Error::input(
                    "--format",
                    format!("unknown format `{s}` (expected {})", names.join(", ")),
                ));
            }
        })
    }
}

/// How a chat record becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RenderMode {
    /// The checkpoint's Jinja chat template, as Hugging Face renders it.
    /// An action is the message's content tokens through the end-of-turn token.
    Template,
    /// The paper's reference renderer: `"\n[role]: content"` per message, each
    /// tokenized alone after BOS; an action is the whole message.
    Plain,
}

impl RenderMode {
    /// `Template` when the tokenizer has a chat template, else `Plain`.
    pub fn default_for(tok: &crate::tokenizer::TokenizerBundle) -> Self {
        if tok.chat_template().is_some() {
            RenderMode::Template
        } else {
            RenderMode::Plain
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RenderMode::Template => "template",
            RenderMode::Plain => "plain",
        }
    }
}

impl FromStr for RenderMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "template" | "chat-template" => Ok(RenderMode::Template),
            "plain" => Ok(RenderMode::Plain),
            _ => Err(Error::input(
                "--render",
                format!("unknown render mode `{s}` (expected template or plain)"),
            )),
        }
    }
}

/// One input trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The input's `id` (a number is written in decimal), τ²'s simulation id,
    /// Who&When's `question_ID` or file stem; `file:line` when absent.
    pub id: String,
    /// Where the record came from, for error messages: `file.jsonl:12`,
    /// `results.json: simulation sim-3`, `Who&When/Hand-Crafted/3.json`.
    pub location: String,
    /// The kind of record this is (never [`Format::Jsonl`]).
    pub format: Format,
    pub body: Body,
    /// Every other input field, in input order (τ²'s `task_id` and
    /// `reward_info`, Who&When's `mistake_step`, a directory's `split`, …).
    pub passthrough: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Plain text: the whole sequence is scored, there are no actions.
    Text {
        text: String,
        add_special_tokens: bool,
    },
    /// Token ids as given. Without spans the whole sequence is scored.
    Tokens {
        token_ids: Vec<u32>,
        /// Validated: in bounds, non-empty, sorted, disjoint.
        action_spans: Option<Vec<(usize, usize)>>,
    },
    /// A conversation.
    Chat(Chat),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    pub messages: Vec<Message>,
    /// The record's `tools` list, handed to the chat template (it stays in
    /// the passthrough too).
    pub tools: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// As given (Who&When: an agent name such as `Orchestrator (thought)`).
    pub role: String,
    /// Null or absent content is empty; a list of text parts is joined.
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub name: Option<String>,
    /// Whether this message is a scored step: assistant messages, or for
    /// Who&When every non-empty message but Hand-Crafted's opening human turn.
    pub is_action: bool,
    /// The message object as given, for the chat template.
    pub raw: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// An object, or the JSON string an OpenAI-style call carries.
    pub arguments: Value,
}

/// A tokenized record: ids, and the token span of each action in step order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    pub token_ids: Vec<u32>,
    pub actions: Vec<Action>,
    /// What the render lost without failing, one sentence each, naming the
    /// message (`messages[3]: the chat template dropped the tool call …`).
    pub warnings: Vec<Warning>,
}

/// Something a record lost without failing, and the message (or token
/// span) it is about, when it is about one: its step carries it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: Option<usize>,
    pub text: String,
}

impl Warning {
    /// A warning about the record as a whole.
    pub fn record(text: impl Into<String>) -> Warning {
        Warning {
            message: None,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The scored positions of the span `[start, end)`: [`Action::scored`].
pub fn scored_span(start: usize, end: usize) -> std::ops::Range<usize> {
    start.max(1).min(end)..end
}

/// The tokens `token_ids[start..end]` of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// Index of the message (or of the span, for token records) it comes from.
    pub message_index: usize,
    pub start: usize,
    /// Exclusive.
    pub end: usize,
    /// The action lost tokens to `max_length` (left truncation), or the
    /// prediction of its first token (the cut fell right before it). An action
    /// that rendered to no tokens at all is empty ([`Action::is_empty`]),
    /// not truncated.
    pub truncated: bool,
}

impl Action {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    /// The positions whose log-probs score the action: all of its tokens but
    /// the sequence's first, which has none (nothing precedes it).
    pub fn scored(&self) -> std::ops::Range<usize> {
        scored_span(self.start, self.end)
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl Encoded {
    /// 1 on every token inside an action, 0 elsewhere.
    pub fn action_mask(&self) -> Vec<u8> {
        let mut mask = vec![0u8; self.token_ids.len()];
        for a in &self.actions {
            let end = a.end.min(mask.len());
            for m in &mut mask[a.start.min(end)..end] {
                *m = 1;
            }
        }
        mask
    }

    /// Keeps the last `max_length` tokens, shifting spans; an action that
    /// loses tokens is kept and flagged `truncated`, as is one cut right
    /// before its first token, which then opens the sequence and has no
    /// log-prob (nothing precedes it).
    pub fn truncate_left(&mut self, max_length: usize) {
        let len = self.token_ids.len();
        if len <= max_length {
            return;
        }
        let cut = len - max_length;
        self.token_ids.drain(..cut);
        for a in &mut self.actions {
            a.truncated |= a.start < cut || (a.start == cut && !a.is_empty());
            a.start = a.start.saturating_sub(cut);
            a.end = a.end.saturating_sub(cut);
        }
    }
}

impl Record {
    /// Whether the trajectory succeeded, from the usual label fields: a
    /// boolean `success`, τ²-bench/WebShop `reward_info.reward` ≥ 1, or a
    /// numeric `reward` ≥ 1. `None` when there is no such field.
    pub fn success(&self) -> Option<bool> {
        let p = &self.passthrough;
        if let Some(b) = p.get("success").and_then(Value::as_bool) {
            return Some(b);
        }
        let reward = p
            .get("reward_info")
            .and_then(|r| r.get("reward"))
            .or_else(|| p.get("reward"))
            .and_then(Value::as_f64)?;
        Some(reward >= 1.0)
    }

    /// The messages of a chat record.
    pub fn messages(&self) -> Option<&[Message]> {
        match &self.body {
            Body::Chat(chat) => Some(&chat.messages),
            _ => None,
        }
    }
}

/// Checks that every id is below `vocab_size` (the model's embedding rows,
/// which may exceed the tokenizer's vocabulary).
pub fn check_token_ids(location: &str, token_ids: &[u32], vocab_size: usize) -> Result<()> {
    match token_ids
        .iter()
        .enumerate()
        .find(|(_, id)| **id as usize >= vocab_size)
    {
        Some((i, id)) => Err(Error::input(
            location,
            format!("token_ids[{i}] = {id} is out of the vocabulary (size {vocab_size})"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_truncation_flags_cut_actions_and_keeps_them() {
        let mut enc = Encoded {
            token_ids: (0..10).collect(),
            actions: vec![
                Action {
                    message_index: 1,
                    start: 1,
                    end: 3,
                    truncated: false,
                },
                Action {
                    message_index: 3,
                    start: 3,
                    end: 6,
                    truncated: false,
                },
                Action {
                    message_index: 5,
                    start: 7,
                    end: 10,
                    truncated: false,
                },
            ],
            warnings: Vec::new(),
        };
        enc.truncate_left(6);
        assert_eq!(enc.token_ids, vec![4, 5, 6, 7, 8, 9]);
        let spans: Vec<_> = enc
            .actions
            .iter()
            .map(|a| (a.start, a.end, a.truncated))
            .collect();
        assert_eq!(spans, vec![(0, 0, true), (0, 2, true), (3, 6, false)]);
        assert_eq!(enc.action_mask(), vec![1, 1, 0, 1, 1, 1]);
    }

    #[test]
    fn out_of_vocab_ids_are_reported_with_their_index() {
        let err = check_token_ids("x.jsonl:3", &[1, 2, 600], 576).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.jsonl:3: token_ids[2] = 600 is out of the vocabulary (size 576)"
        );
        check_token_ids("x", &[575], 576).unwrap();
    }

    #[test]
    fn formats_parse_from_their_cli_names() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert_eq!("webshop".parse::<Format>().unwrap(), Format::Tau2);
        assert_eq!("Who&When".parse::<Format>().unwrap(), Format::WhoAndWhen);
        assert!("csv".parse::<Format>().is_err());
    }
}
