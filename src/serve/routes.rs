//! The HTTP surface: the route table, one handler per endpoint, and the
//! layer that counts every answer in the metrics.
//!
//! Handlers parse and validate on the async side (cheap, and every schema
//! error is a `400` naming its field before anything is queued), hand the
//! records to the worker's queue, and await the answer until the request's
//! deadline. Session steps hold their session's lock across that wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::OwnedMutexGuard;

use super::api::{
    self, ApiError, RecordError, StepRequest, json_response, parse_create_session, parse_step,
};
use super::metrics::Metrics;
use super::sessions::{SessionState, SessionStore, Slot, unknown};
use super::worker::{Outcome, Priority, Queue};
use crate::pipeline::ScorerOptions;
use crate::session::Session;
use crate::trajectory::Record;

/// The OpenAPI description, as kept in the repository (`openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route served, as (method, path template). `openapi.json` describes
/// exactly these (a test holds the two together).
pub const ROUTES: [(&str, &str); 10] = [
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/models"),
    ("POST", "/v1/score"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/steps"),
    ("POST", "/v1/sessions/{id}/fork"),
];

/// What every handler shares.
pub struct AppState {
    pub queue: Queue,
    pub sessions: SessionStore,
    pub metrics: Arc<Metrics>,
    /// The options the server was started with: each request's defaults.
    pub base: ScorerOptions,
    /// `/v1/models`.
    pub models: Value,
    pub timeout: Duration,
    pub max_request_bytes: usize,
    /// Time for a body to arrive once its request's head has.
    pub read_timeout: Duration,
    /// `Authorization: Bearer` key every route but `/health` needs, when set.
    pub api_key: Option<String>,
}

type Shared = State<Arc<AppState>>;
type Body = Result<Bytes, BytesRejection>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/models", get(models))
        .route("/v1/score", post(score))
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{id}/steps", post(step))
        .route("/v1/sessions/{id}/fork", post(fork))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(state.max_request_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts each answer by route template and status, with its latency.
async fn track(
    State(st): Shared,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    st.metrics
        .request(&method, &route, resp.status().as_u16(), start.elapsed());
    resp
}

/// With `--api-key`, every route but `/health` answers `401` unless the
/// request carries `Authorization: Bearer KEY`. Checked before the body is
/// read.
async fn authorize(State(st): Shared, req: Request, next: Next) -> Response {
    let Some(key) = st.api_key.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let message = match given {
        Some(token) if same_key(token.as_bytes(), key.as_bytes()) => {
            return next.run(req).await;
        }
        Some(_) => "the API key is wrong",
        None => "this server needs an API key: send `Authorization: Bearer KEY`",
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Equal keys, compared in time that depends on their lengths only.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the whole body before the handler runs: a `Content-Length` over
/// `--max-request-bytes` is `413` before any of it is read, a body that has
/// not arrived within `--read-timeout` is `408`, and both close the
/// connection (the rest of the body is never read).
async fn read_body(State(st): Shared, req: Request, next: Next) -> Response {
    let limit = st.max_request_bytes;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return closing(too_large(limit));
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(st.read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => {
            let body = axum::body::Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => closing(too_large(limit)),
        Ok(Err(e)) => closing(ApiError::field(
            "body",
            format!("the request body could not be read: {e}"),
        )),
        Err(_) => closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within the server's read timeout ({:?})",
                st.read_timeout
            ),
        )),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body exceeds the server's limit of {limit} bytes"),
    )
}

/// An error answer after which the connection is closed.
fn closing(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

impl AppState {
    /// Queue `records` and wait for their results until `deadline`.
    async fn run(
        &self,
        records: Vec<Record>,
        opts: ScorerOptions,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Outcome, ApiError> {
        let rx = self.queue.submit(records, opts, priority, deadline)?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            // The worker drops a job it finds past its deadline.
            Ok(Err(_)) if Instant::now() >= deadline => Err(self.timed_out()),
            Ok(Err(_)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the scoring worker stopped before answering",
            )),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than the server's request timeout ({:?}) and was dropped",
                self.timeout
            ),
        )
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Session `id` and its state, locked for this request: 404 when
    /// unknown, expired or closed while the request waited for the lock; 504
    /// when the lock is not had by `deadline`.
    async fn locked_session(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<(Arc<Slot>, OwnedMutexGuard<SessionState>), ApiError> {
        let slot = self.sessions.get(id)?;
        let state = tokio::time::timeout_at(deadline.into(), slot.state.clone().lock_owned())
            .await
            .map_err(|_| self.timed_out())?;
        if state.closed {
            return Err(unknown(id));
        }
        Ok((slot, state))
    }
}

/// The body bytes, or `413` past `--max-request-bytes` / `400` otherwise.
fn body_bytes(st: &AppState, body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(st.max_request_bytes)
        } else {
            ApiError::field("body", r.body_text())
        }
    })
}

async fn health(State(st): Shared) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "uptime_s": st.metrics.uptime().as_secs_f64(),
            "queue_depth": st.metrics.queue_depth.load(std::sync::atomic::Ordering::Relaxed),
            "queue_capacity": st.metrics.queue_capacity,
            "sessions": st.sessions.len(),
        }),
    )
}

async fn metrics(State(st): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.sessions.len()),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn models(State(st): Shared) -> Response {
    json_response(StatusCode::OK, &st.models)
}

async fn no_route(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// A known route asked with another method: a JSON 405 like every other
/// error (the router adds the `Allow` header listing the route's methods).
async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} {}: the route does not take this method (`Allow` lists those it takes)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// A session id from the path; one that cannot be read (not UTF-8 once
/// percent-decoded) is a JSON 400 like every other error.
struct SessionId(String);

impl<S: Send + Sync> FromRequestParts<S> for SessionId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| SessionId(id))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

/// `POST /v1/score`: the records `padv score` would write, in order.
async fn score(State(st): Shared, body: Body) -> Result<Response, ApiError> {
    let deadline = st.deadline();
    let req = api::parse_score(&body_bytes(&st, body)?)?;
    let opts = req.overrides.apply(&st.base);
    let mut slots: Vec<Result<usize, RecordError>> = Vec::with_capacity(req.records.len());
    let mut records = Vec::new();
    for r in req.records {
        slots.push(r.map(|r| {
            records.push(r);
            records.len() - 1
        }));
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let mut scored = if records.is_empty() {
        Vec::new()
    } else {
        st.run(records, opts, Priority::Bulk, deadline).await?
    };
    let results: Vec<Value> = slots
        .into_iter()
        .map(|slot| match slot {
            Err(e) => e.to_json(),
            Ok(i) => match scored.get_mut(i).map_or_else(
                || Err("not scored".to_string()),
                |s| std::mem::replace(s, Err(String::new())),
            ) {
                Ok(s) => s.json,
                Err(error) => RecordError {
                    id: Some(ids[i].clone()),
                    error,
                }
                .to_json(),
            },
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// A library error about a session's messages as a `400` on `field`.
fn schema(field: &str, e: crate::Error) -> ApiError {
    let msg = e.to_string();
    let msg = msg.strip_prefix("session: ").unwrap_or(&msg).to_string();
    ApiError {
        field: Some(field.to_string()),
        ..ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
}

fn unprocessable(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

async fn create_session(State(st): Shared, body: Body) -> Result<Response, ApiError> {
    let req = parse_create_session(&body_bytes(&st, body)?)?;
    let mut session = Session::new(req.messages);
    if let Some(t) = req.tools {
        session = session.with_tools(t);
    }
    if !session.messages().is_empty() {
        session.record(&[]).map_err(|e| schema("messages", e))?;
    }
    let n_messages = session.messages().len();
    let id = st.sessions.insert(SessionState {
        session,
        opts: req.overrides.apply(&st.base),
        n_tokens: 0,
        closed: false,
    })?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "session_id": id,
            "n_messages": n_messages,
            "ttl_s": st.sessions.ttl.as_secs_f64(),
        }),
    ))
}

async fn get_session(State(st): Shared, SessionId(id): SessionId) -> Result<Response, ApiError> {
    let (_, state) = st.locked_session(&id, st.deadline()).await?;
    let o = &state.opts;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "session_id": id,
            "messages": state.session.messages(),
            "tools": state.session.tools(),
            "n_messages": state.session.messages().len(),
            "n_tokens": state.n_tokens,
            "settings": {
                "render": o.render.map(|r| r.name()),
                "token_agg": o.token_agg.name(),
                "step_agg": o.step_agg.name(),
                "beta": o.beta,
            },
        }),
    ))
}

async fn delete_session(State(st): Shared, SessionId(id): SessionId) -> Result<Response, ApiError> {
    let slot = st.sessions.remove(&id)?;
    // Wait for a step in flight, so one queued behind it sees the session closed.
    if let Ok(mut state) = tokio::time::timeout_at(st.deadline().into(), slot.state.lock()).await {
        state.closed = true;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fork(
    State(st): Shared,
    SessionId(id): SessionId,
    body: Body,
) -> Result<Response, ApiError> {
    api::parse_fork(&body_bytes(&st, body)?)?;
    let (_, state) = st.locked_session(&id, st.deadline()).await?;
    let copy = SessionState {
        session: state.session.fork(),
        opts: state.opts.clone(),
        n_tokens: state.n_tokens,
        closed: false,
    };
    let n_messages = copy.session.messages().len();
    drop(state);
    let new_id = st.sessions.insert(copy)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "session_id": new_id, "forked_from": id, "n_messages": n_messages }),
    ))
}

/// `POST /v1/sessions/{id}/steps`: append and score, or compare candidates.
async fn step(
    State(st): Shared,
    SessionId(id): SessionId,
    body: Body,
) -> Result<Response, ApiError> {
    let deadline = st.deadline();
    let req = parse_step(&body_bytes(&st, body)?)?;
    let (slot, mut state) = st.locked_session(&id, deadline).await?;
    let first_new = state.session.messages().len();
    let opts = state.opts.clone();
    let resp = match req {
        StepRequest::Append(messages) => {
            let record = state
                .session
                .record(&messages)
                .map_err(|e| schema("messages", e))?;
            let scored = st
                .run(vec![record], opts, Priority::Interactive, deadline)
                .await?
                .pop()
                .unwrap_or_else(|| Err("nothing was scored".into()))
                .map_err(unprocessable)?;
            state.session.extend(messages);
            state.n_tokens = scored.n_tokens;
            json!({
                "session_id": id,
                "steps": new_steps(&scored.json, first_new),
                "score": scored.json["score"],
                "n_messages": state.session.messages().len(),
                "n_tokens": scored.n_tokens,
            })
        }
        StepRequest::Candidates {
            observation,
            actions,
        } => {
            let records = actions
                .into_iter()
                .enumerate()
                .map(|(i, a)| {
                    let mut m = observation.clone();
                    m.push(a);
                    state
                        .session
                        .record(&m)
                        .map_err(|e| schema(&format!("candidates[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let first_new = first_new + observation.len();
            let out = st
                .run(records, opts, Priority::Interactive, deadline)
                .await?;
            let candidates: Vec<Value> = out
                .into_iter()
                .enumerate()
                .map(|(i, r)| candidate(i, r, first_new))
                .collect();
            let best = best_candidate(&candidates);
            json!({ "session_id": id, "candidates": candidates, "best": best })
        }
    };
    drop(state);
    slot.touch();
    Ok(json_response(StatusCode::OK, &resp))
}

/// The index of the candidate with the highest advantage, the earliest on
/// ties (as `openapi.json` documents); candidates that failed are passed over.
fn best_candidate(candidates: &[Value]) -> Option<u64> {
    candidates
        .iter()
        .filter_map(|c| Some((c["candidate"].as_u64()?, c["advantage"].as_f64()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
}

/// One candidate's step (its last new action), or its error, tagged with its index.
fn candidate(i: usize, r: Result<super::worker::Scored, String>, first_new: usize) -> Value {
    let step = r.and_then(|s| {
        new_steps(&s.json, first_new)
            .pop()
            .ok_or_else(|| format!("candidate {i} is not an action (its role must be `assistant`)"))
    });
    match step {
        Ok(Value::Object(mut o)) => {
            o.insert("candidate".into(), json!(i));
            Value::Object(o)
        }
        Ok(other) => other,
        Err(e) => json!({ "candidate": i, "error": e }),
    }
}

/// The steps of a scored session state that are new (their message index is
/// at least `first_new`), exactly as `padv score` writes steps.
pub fn new_steps(scored: &Value, first_new: usize) -> Vec<Value> {
    scored["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|s| {
                    s["message"]
                        .as_u64()
                        .is_some_and(|m| m as usize >= first_new)
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_candidate_is_the_earliest_highest_advantage_and_errors_are_passed_over() {
        let c = |i: u64, a: f64| json!({"candidate": i, "advantage": a});
        let err = |i: u64| json!({"candidate": i, "error": "not an action"});
        let best = |v: &[Value]| best_candidate(v);
        assert_eq!(best(&[c(0, -1.0), c(1, 0.5), c(2, -3.0)]), Some(1));
        assert_eq!(best(&[c(0, 0.2), c(1, 0.7), c(2, 0.7), c(3, 0.1)]), Some(1));
        assert_eq!(best(&[err(0), c(1, -2.0), err(2), c(3, -1.0)]), Some(3));
        assert_eq!(best(&[err(0), err(1)]), None);
    }
}
