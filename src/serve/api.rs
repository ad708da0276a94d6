//! The wire format: request bodies parsed into typed requests, errors that
//! name the offending field, and the JSON error response.
//!
//! Bodies are parsed by hand from a `serde_json::Value` rather than derived,
//! so that every schema error says which field is wrong and why
//! (`token_agg: unknown aggregation `median`; expected one of …`), and
//! unknown fields are rejected (a typo is an error, not a silent default).

use std::str::FromStr;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::pipeline::ScorerOptions;
use crate::score::aggregate::{StepAgg, TokenAgg};
use crate::trajectory::{Record, RenderMode, record_from_json};

/// An HTTP error answered as `{"error": message, "field"?: name}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, for schema errors.
    pub field: Option<String>,
    /// Seconds, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400 for `field`: the message is prefixed with the field's name.
    pub fn field(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {message}"))
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    pub fn busy(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(f) = &self.field {
            body["field"] = Value::String(f.clone());
        }
        let mut resp = json_response(self.status, &body);
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A JSON body with its content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// How one request wants records scored; unset fields take the server's
/// defaults (the options it was started with).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    pub render: Option<RenderMode>,
    pub token_agg: Option<TokenAgg>,
    pub step_agg: Option<StepAgg>,
    pub beta: Option<f64>,
    /// Token-level arrays in each result (`padv score --tokens`).
    pub tokens: Option<bool>,
}

impl Overrides {
    /// The scorer options for this request on a server started with `base`.
    pub fn apply(&self, base: &ScorerOptions) -> ScorerOptions {
        ScorerOptions {
            render: self.render.or(base.render),
            token_agg: self.token_agg.unwrap_or(base.token_agg),
            step_agg: self.step_agg.unwrap_or(base.step_agg),
            beta: self.beta.unwrap_or(base.beta),
            with_tokens: self.tokens.unwrap_or(base.with_tokens),
            ..base.clone()
        }
    }

    /// Take the option fields out of a body object.
    fn take(obj: &mut Map<String, Value>, allow_tokens: bool) -> Result<Overrides, ApiError> {
        let mut o = Overrides::default();
        if let Some(v) = obj.remove("render") {
            o.render = Some(parse_name::<RenderMode>("render", &v)?);
        }
        if let Some(v) = obj.remove("token_agg") {
            o.token_agg = Some(parse_name::<TokenAgg>("token_agg", &v)?);
        }
        if let Some(v) = obj.remove("step_agg") {
            o.step_agg = Some(parse_name::<StepAgg>("step_agg", &v)?);
        }
        if let Some(v) = obj.remove("beta") {
            let b = v
                .as_f64()
                .ok_or_else(|| ApiError::field("beta", "expected a finite number"))?;
            o.beta = Some(crate::pipeline::check_beta(b).map_err(|e| ApiError::field("beta", e))?);
        }
        if allow_tokens && let Some(v) = obj.remove("tokens") {
            o.tokens = Some(
                v.as_bool()
                    .ok_or_else(|| ApiError::field("tokens", "expected true or false"))?,
            );
        }
        Ok(o)
    }
}

fn parse_name<T: FromStr>(field: &str, v: &Value) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    let s = v
        .as_str()
        .ok_or_else(|| ApiError::field(field, format!("expected a string, found {}", kind(v))))?;
    s.parse::<T>().map_err(|e| {
        // Library errors name the CLI flag (`--render: …`); keep the reason only.
        let msg = e.to_string();
        let reason = msg.split_once(": ").map_or(msg.as_str(), |(_, r)| r);
        ApiError::field(field, reason)
    })
}

/// `POST /v1/score`.
#[derive(Debug)]
pub struct ScoreRequest {
    /// One entry per input record, in order; a record that does not parse is
    /// its error, answered in place.
    pub records: Vec<Result<Record, RecordError>>,
    pub overrides: Overrides,
}

/// A record that could not be read or scored: `{"id", "error"}` in the results.
#[derive(Debug, Clone)]
pub struct RecordError {
    pub id: Option<String>,
    pub error: String,
}

impl RecordError {
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "error": self.error })
    }
}

pub fn parse_score(body: &[u8]) -> Result<ScoreRequest, ApiError> {
    let mut obj = body_object(body)?;
    let overrides = Overrides::take(&mut obj, true)?;
    let list = match obj.remove("trajectories") {
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(ApiError::field(
                "trajectories",
                format!("expected a list of records, found {}", kind(&other)),
            ));
        }
        None => {
            return Err(ApiError::field(
                "trajectories",
                "missing (expected a list of records)",
            ));
        }
    };
    no_other_fields(
        &obj,
        &[
            "trajectories",
            "render",
            "token_agg",
            "step_agg",
            "beta",
            "tokens",
        ],
    )?;
    let records = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let id = v.get("id").and_then(|id| match id {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            record_from_json(v, &format!("trajectories[{i}]")).map_err(|e| RecordError {
                id,
                error: e.to_string(),
            })
        })
        .collect();
    Ok(ScoreRequest { records, overrides })
}

/// `POST /v1/sessions`.
#[derive(Debug)]
pub struct CreateSession {
    pub messages: Vec<Value>,
    pub tools: Option<Value>,
    pub overrides: Overrides,
}

pub fn parse_create_session(body: &[u8]) -> Result<CreateSession, ApiError> {
    let mut obj = body_object(body)?;
    let overrides = Overrides::take(&mut obj, false)?;
    let messages = match obj.remove("messages") {
        None => Vec::new(),
        Some(v) => message_list("messages", v, None)?,
    };
    let tools = match obj.remove("tools") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Array(_)) => Some(v),
        Some(other) => {
            return Err(ApiError::field(
                "tools",
                format!("expected a list of tools, found {}", kind(&other)),
            ));
        }
    };
    no_other_fields(
        &obj,
        &[
            "messages",
            "tools",
            "render",
            "token_agg",
            "step_agg",
            "beta",
        ],
    )?;
    Ok(CreateSession {
        messages,
        tools,
        overrides,
    })
}

/// `POST /v1/sessions/{id}/steps`: what to add, or what to compare.
#[derive(Debug, PartialEq)]
pub enum StepRequest {
    /// Append these messages (an observation and an action, or any run of
    /// messages) and score the actions among them.
    Append(Vec<Value>),
    /// Score each candidate action after the observation messages, leaving
    /// the session unchanged.
    Candidates {
        observation: Vec<Value>,
        actions: Vec<Value>,
    },
}

pub fn parse_step(body: &[u8]) -> Result<StepRequest, ApiError> {
    let mut obj = body_object(body)?;
    no_other_fields(&obj, &["messages", "observation", "action", "candidates"])?;
    let messages = obj.remove("messages");
    let observation = match obj.remove("observation") {
        None | Some(Value::Null) => Vec::new(),
        Some(v @ Value::Array(_)) => message_list("observation", v, Some("user"))?,
        Some(v) => vec![message("observation", v, "user")?],
    };
    let action = obj.remove("action");
    let candidates = obj.remove("candidates");
    let given = [messages.is_some(), action.is_some(), candidates.is_some()];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(ApiError::field(
            "action",
            "give exactly one of `action` (with an optional `observation`), \
             `candidates` (with an optional `observation`) or `messages`",
        ));
    }
    if let Some(m) = messages {
        if !observation.is_empty() {
            return Err(ApiError::field(
                "observation",
                "not allowed with `messages` (put it in the list)",
            ));
        }
        let list = message_list("messages", m, None)?;
        if list.is_empty() {
            return Err(ApiError::field("messages", "empty list"));
        }
        return Ok(StepRequest::Append(list));
    }
    if let Some(a) = action {
        let mut list = observation;
        list.push(action_message("action", a)?);
        return Ok(StepRequest::Append(list));
    }
    let Some(candidates) = candidates else {
        return Err(ApiError::field("candidates", "missing"));
    };
    let actions = match candidates {
        Value::Array(items) if !items.is_empty() => items
            .into_iter()
            .enumerate()
            .map(|(i, a)| message(&format!("candidates[{i}]"), a, "assistant"))
            .collect::<Result<Vec<_>, _>>()?,
        Value::Array(_) => return Err(ApiError::field("candidates", "empty list")),
        other => {
            return Err(ApiError::field(
                "candidates",
                format!("expected a list of actions, found {}", kind(&other)),
            ));
        }
    };
    Ok(StepRequest::Candidates {
        observation,
        actions,
    })
}

/// A list of messages; each an object (or, where `default_role` is given, a
/// string taken as that role's content).
fn message_list(field: &str, v: Value, default_role: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let Value::Array(items) = v else {
        return Err(ApiError::field(
            field,
            format!("expected a list of messages, found {}", kind(&v)),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{field}[{i}]");
            match default_role {
                Some(role) => message(&at, m, role),
                None if m.is_object() => Ok(m),
                None => Err(ApiError::field(
                    &at,
                    format!("expected a message object, found {}", kind(&m)),
                )),
            }
        })
        .collect()
}

/// An action: an `assistant` message, or a string taken as one. Another role
/// is an error, not a message with nothing to score. (A candidate of another
/// role is that candidate's error in the answer, next to the others' scores.)
fn action_message(field: &str, v: Value) -> Result<Value, ApiError> {
    let m = message(field, v, "assistant")?;
    match m["role"].as_str() {
        Some("assistant") => Ok(m),
        other => Err(ApiError::field(
            &format!("{field}.role"),
            format!(
                "an action is an `assistant` message, found `{}` (send an observation as                  `observation`, or any run of messages as `messages`)",
                other.unwrap_or_default()
            ),
        )),
    }
}

/// `POST /v1/sessions/{id}/fork` takes no body (or an empty object).
pub fn parse_fork(body: &[u8]) -> Result<(), ApiError> {
    let obj = body_object(body)?;
    match obj.keys().next() {
        Some(k) => Err(ApiError::field(
            k,
            "unknown field (a fork takes no body: it copies the session as it is)",
        )),
        None => Ok(()),
    }
}

/// A message object, or a string as `{"role": default_role, "content": s}`.
fn message(field: &str, v: Value, default_role: &str) -> Result<Value, ApiError> {
    match v {
        Value::String(s) => Ok(json!({ "role": default_role, "content": s })),
        Value::Object(o) => {
            if !o.get("role").is_some_and(Value::is_string) {
                return Err(ApiError::field(
                    &format!("{field}.role"),
                    "missing (expected a string)",
                ));
            }
            Ok(Value::Object(o))
        }
        other => Err(ApiError::field(
            field,
            format!(
                "expected a message object or a string, found {}",
                kind(&other)
            ),
        )),
    }
}

/// The body as a JSON object; an empty body is `{}`.
pub fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(ApiError::field(
            "body",
            format!("expected a JSON object, found {}", kind(&other)),
        )),
        Err(e) => Err(ApiError::field("body", format!("malformed JSON: {e}"))),
    }
}

fn no_other_fields(obj: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::field(
            k,
            format!("unknown field (expected {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

use crate::trajectory::json_kind as kind;

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        e.field.unwrap()
    }

    #[test]
    fn schema_errors_name_the_field_at_fault() {
        assert_eq!(
            field_of(parse_score(b"{\"trajectories\": 3}")),
            "trajectories"
        );
        assert_eq!(field_of(parse_score(b"{}")), "trajectories");
        assert_eq!(
            field_of(parse_score(
                b"{\"trajectories\": [], \"token_agg\": \"median\"}"
            )),
            "token_agg"
        );
        assert_eq!(
            field_of(parse_score(b"{\"trajectories\": [], \"beta\": \"x\"}")),
            "beta"
        );
        assert_eq!(
            field_of(parse_score(b"{\"trajectories\": [], \"beta\": 1e308}")),
            "beta"
        );
        assert_eq!(
            field_of(parse_score(b"{\"trajectories\": [], \"colour\": 1}")),
            "colour"
        );
        assert_eq!(field_of(parse_score(b"{\"trajectories\": [")), "body");
        assert_eq!(field_of(parse_score(b"[1]")), "body");
        assert_eq!(
            field_of(parse_step(b"{\"action\": {\"content\": \"x\"}}")),
            "action.role"
        );
        assert_eq!(
            field_of(parse_step(b"{\"candidates\": [\"a\", 3]}")),
            "candidates[1]"
        );
        assert_eq!(field_of(parse_step(b"{}")), "action");
        assert_eq!(
            field_of(parse_step(
                br#"{"action": {"role": "user", "content": "go north"}}"#
            )),
            "action.role"
        );
        assert_eq!(field_of(parse_fork(br#"{"messages": []}"#)), "messages");
        assert_eq!(field_of(parse_fork(b"[1]")), "body");
        assert_eq!(field_of(parse_fork(b"nonsense")), "body");
        assert!(parse_fork(b"").is_ok() && parse_fork(b" {} ").is_ok());
        assert_eq!(
            field_of(parse_create_session(b"{\"tools\": \"x\"}")),
            "tools"
        );
        let e = parse_score(b"{\"trajectories\": [], \"render\": \"fancy\"}").unwrap_err();
        assert!(
            e.message.starts_with("render: unknown render mode"),
            "{e:?}"
        );
    }

    #[test]
    fn strings_stand_for_observation_and_action_messages() {
        let s = parse_step(br#"{"observation": "at 1 0", "action": "go north"}"#).unwrap();
        assert_eq!(
            s,
            StepRequest::Append(vec![
                json!({"role": "user", "content": "at 1 0"}),
                json!({"role": "assistant", "content": "go north"}),
            ])
        );
        let c = parse_step(br#"{"candidates": ["wait", {"role": "assistant", "content": "go"}]}"#)
            .unwrap();
        let StepRequest::Candidates {
            observation,
            actions,
        } = c
        else {
            panic!("expected candidates")
        };
        assert!(observation.is_empty());
        assert_eq!(actions[0]["role"], "assistant");
    }

    #[test]
    fn bad_records_stay_in_place_with_their_id() {
        let r = parse_score(
            br#"{"trajectories": [{"id": "a", "text": "go"}, {"id": 7, "nothing": 1}], "tokens": true}"#,
        )
        .unwrap();
        assert!(r.records[0].is_ok());
        let e = r.records[1].as_ref().unwrap_err();
        assert_eq!(e.id.as_deref(), Some("7"));
        assert!(e.error.starts_with("trajectories[1]: missing"), "{e:?}");
        assert_eq!(r.overrides.tokens, Some(true));
    }
}
