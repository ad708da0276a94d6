//! Scored trajectories: the typed form of what `padv score` writes (one JSON
//! object per line), or of trajectories scored in memory by the CLI.
//!
//! A record carries its input fields through, plus `steps` (one entry per
//! action, 0-based), `score`, `baselines` and `settings`; with `--tokens` it
//! also has a `tokens` object of per-token arrays and a `span` per step. An
//! error record (`{"id", "error"}`) is not a trajectory: it is counted in
//! [`ScoredSet::skipped`] and left out of every metric.
//!
//! Labels follow the paper's data: success from `success`, else
//! `reward ≥ 1`, else `reward_info.reward ≥ 1` (as `tau2_bon.py`); the reward
//! for Spearman from `reward`, `reward_info.reward`, else success as 0/1;
//! `failure_step` indexes the action steps, Who&When's `mistake_step` indexes
//! the messages of `history` (compared against `steps[k].message`).

use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use crate::score::TokenScores;
use crate::score::aggregate::{StepAgg, TokenAgg};
use crate::{Error, Result};

/// One action step as scored: token-aggregated values, `None` where unscored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepScore {
    /// Index of the action's message in the conversation.
    pub message: Option<usize>,
    pub n_tokens: usize,
    /// β·(token_agg(log π_θ) − token_agg(log π_ref)).
    pub advantage: Option<f64>,
    /// token_agg(log π_θ) over the action tokens (not scaled by β).
    pub logp_policy: Option<f64>,
    /// token_agg(log π_ref) over the action tokens (not scaled by β).
    pub logp_reference: Option<f64>,
    /// Mean policy entropy over the action tokens (nats).
    pub entropy: Option<f64>,
    /// Mean over the action tokens of the mean top-20 policy log-prob.
    pub self_certainty: Option<f64>,
    /// The action lost tokens to `--max-length` (it scores 0.0).
    pub truncated: bool,
    /// The action rendered to no tokens at all (it scores 0.0).
    pub empty: bool,
    /// Token positions `[start, end)` of the action in [`ScoredTrajectory::tokens`].
    pub span: Option<(usize, usize)>,
}

impl StepScore {
    /// The step has no scored tokens (truncated by `max_length`, or empty):
    /// it counts 0.0 where the method fills in, and has no value of its own.
    pub fn unscored(&self) -> bool {
        self.truncated || self.empty
    }
}

/// What a trajectory is known to have achieved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    pub success: Option<bool>,
    /// Graded outcome for Spearman ρ; success as 0/1 when no reward is given.
    pub reward: Option<f64>,
    /// Decisive error as a 0-based index among the action steps.
    pub failure_step: Option<usize>,
    /// Decisive error as a message index (Who&When `mistake_step`).
    pub mistake_step: Option<usize>,
}

/// How the step values in a record were computed.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSettings {
    pub token_agg: TokenAgg,
    pub step_agg: StepAgg,
    pub beta: f64,
    pub render: Option<String>,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            token_agg: TokenAgg::Mean,
            step_agg: StepAgg::Mean,
            beta: 1.0,
            render: None,
        }
    }
}

/// One scored trajectory with its labels.
#[derive(Debug, Clone)]
pub struct ScoredTrajectory {
    pub id: String,
    /// Where it came from, for error messages (`file.jsonl:12`).
    pub location: String,
    /// Best-of-N group (the `--group-by` field's value).
    pub group: Option<String>,
    pub labels: Labels,
    pub steps: Vec<StepScore>,
    /// Per-token arrays (NaN = unscored), present when scored with `--tokens`.
    pub tokens: Option<TokenScores>,
    pub settings: ScoreSettings,
    /// The full input record, for passing chosen trajectories through.
    pub record: Option<Value>,
}

/// A line that held an error record (or anything else without steps to score).
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRecord {
    pub location: String,
    pub id: Option<String>,
    pub error: String,
}

/// The trajectories of one or more files, and the error records skipped.
#[derive(Debug, Clone, Default)]
pub struct ScoredSet {
    pub trajectories: Vec<ScoredTrajectory>,
    pub skipped: Vec<SkippedRecord>,
}

impl From<Vec<ScoredTrajectory>> for ScoredSet {
    fn from(trajectories: Vec<ScoredTrajectory>) -> Self {
        ScoredSet {
            trajectories,
            skipped: Vec::new(),
        }
    }
}

/// How to read labels and groups from records.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    /// Field naming the best-of-N group; dots reach into objects (`info.task`).
    pub group_by: String,
    /// A line that is not a valid scored record (not UTF-8, not JSON, a bad
    /// field) is counted in [`ScoredSet::skipped`] instead of failing the file.
    pub skip_invalid: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            group_by: "task_id".to_string(),
            skip_invalid: false,
        }
    }
}

impl ReadOptions {
    /// The group-by field's value in `obj`, as text.
    pub fn group_of(&self, obj: &Map<String, Value>) -> Option<String> {
        lookup(obj, &self.group_by).and_then(scalar_text)
    }
}

impl ScoredTrajectory {
    /// A trajectory scored in memory; add labels, group and tokens with the
    /// `with_*` methods.
    pub fn new(id: impl Into<String>, steps: Vec<StepScore>, settings: ScoreSettings) -> Self {
        let id = id.into();
        ScoredTrajectory {
            location: format!("trajectory `{id}`"),
            id,
            group: None,
            labels: Labels::default(),
            steps,
            tokens: None,
            settings,
            record: None,
        }
    }

    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    pub fn with_record(mut self, record: Value) -> Self {
        self.record = Some(record);
        self
    }

    /// Take labels, group and the passthrough record from the input record
    /// the trajectory was scored from (for trajectories scored in memory).
    pub fn with_input_record(mut self, record: Value, opts: &ReadOptions) -> Result<Self> {
        let Value::Object(obj) = &record else {
            return Err(Error::input(&self.location, "expected a JSON object"));
        };
        self.labels = Labels::from_record(obj, &self.location)?;
        self.group = opts.group_of(obj);
        self.record = Some(record);
        Ok(self)
    }

    /// Attach per-token arrays; every step must then have a span inside them.
    pub fn with_tokens(mut self, tokens: TokenScores) -> Result<Self> {
        check_tokens(&tokens, &self.steps, &self.location)?;
        self.tokens = Some(tokens);
        Ok(self)
    }

    /// Parse one record. `Ok(Err(skipped))` for an error record.
    pub fn from_json(
        record: Value,
        location: &str,
        opts: &ReadOptions,
    ) -> Result<std::result::Result<Self, SkippedRecord>> {
        let Value::Object(obj) = &record else {
            return Err(Error::input(location, "expected a JSON object"));
        };
        let id = obj.get("id").and_then(scalar_text);
        if !obj.contains_key("steps") {
            let error = match obj.get("error") {
                Some(e) => scalar_text(e).unwrap_or_else(|| e.to_string()),
                None => {
                    return Err(Error::input(
                        location,
                        "no field `steps`: not a scored trajectory (run `padv score` first)",
                    ));
                }
            };
            return Ok(Err(SkippedRecord {
                location: location.to_string(),
                id,
                error,
            }));
        }
        let steps = parse_steps(obj, location)?;
        let settings = parse_settings(obj, location)?;
        let labels = Labels::from_record(obj, location)?;
        let group = opts.group_of(obj);
        // Token arrays sit at the top level (as `padv score --tokens` writes
        // them) or, in older files, under a `tokens` object.
        let tokens = match obj.get("tokens") {
            Some(t @ Value::Object(_)) => Some(parse_tokens(t, location)?),
            _ if obj.get("logp_policy").is_some_and(Value::is_array) => {
                Some(parse_tokens(&record, location)?)
            }
            _ => None,
        };
        if let Some(t) = &tokens {
            check_tokens(t, &steps, location)?;
        }
        Ok(Ok(ScoredTrajectory {
            id: id.unwrap_or_else(|| location.to_string()),
            location: location.to_string(),
            group,
            labels,
            steps,
            tokens,
            settings,
            record: Some(record),
        }))
    }
}

impl Labels {
    /// Read the labels of one record (see the module docs for the rules).
    pub fn from_record(obj: &Map<String, Value>, location: &str) -> Result<Labels> {
        let reward_info = match obj.get("reward_info") {
            Some(Value::Object(m)) => opt_f64(m.get("reward"), location, "reward_info.reward")?,
            _ => None,
        };
        let reward = opt_f64(obj.get("reward"), location, "reward")?;
        let success = match obj.get("success") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::Number(n)) => n.as_f64().map(|x| x >= 1.0),
            Some(other) => {
                return Err(Error::input(
                    location,
                    format!("field `success`: expected a boolean, got {other}"),
                ));
            }
        };
        let graded = reward.or(reward_info);
        let success = success.or(graded.map(|r| r >= 1.0));
        let reward = graded.or(success.map(|s| if s { 1.0 } else { 0.0 }));
        Ok(Labels {
            success,
            reward,
            failure_step: opt_index(obj.get("failure_step"), location, "failure_step")?,
            mistake_step: opt_index(obj.get("mistake_step"), location, "mistake_step")?,
        })
    }
}

/// Read a JSONL file of scored records.
pub fn read_scored(path: &Path, opts: &ReadOptions) -> Result<ScoredSet> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    parse_scored(
        std::io::BufReader::new(file),
        &path.display().to_string(),
        opts,
    )
}

/// Parse JSONL from any reader; `source` names it in error messages. Blank
/// lines are not records.
pub fn parse_scored(
    mut reader: impl BufRead,
    source: &str,
    opts: &ReadOptions,
) -> Result<ScoredSet> {
    let mut set = ScoredSet::default();
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::input(source, e.to_string()))?
            == 0
        {
            break;
        }
        let location = format!("{source}:{n}");
        let mut id = None;
        let parsed = std::str::from_utf8(&buf)
            .map_err(|e| {
                let msg = format!("invalid UTF-8 at byte {} of the line", e.valid_up_to());
                Error::input(&location, msg)
            })
            .and_then(|line| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| Error::input(&location, format!("invalid JSON: {e}")))?;
                id = value.get("id").and_then(scalar_text);
                ScoredTrajectory::from_json(value, &location, opts).map(Some)
            });
        match parsed {
            Ok(None) => {}
            Ok(Some(Ok(t))) => set.trajectories.push(t),
            Ok(Some(Err(s))) => set.skipped.push(s),
            Err(e) if opts.skip_invalid => set.skipped.push(SkippedRecord {
                location,
                id,
                error: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(set)
}

fn parse_steps(obj: &Map<String, Value>, location: &str) -> Result<Vec<StepScore>> {
    let Some(Value::Array(items)) = obj.get("steps") else {
        return Err(Error::input(location, "field `steps`: expected an array"));
    };
    let mut steps = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let field = |name: &str| format!("steps[{k}].{name}");
        let Value::Object(s) = item else {
            return Err(Error::input(
                location,
                format!("field `steps[{k}]`: expected an object"),
            ));
        };
        if let Some(at) = opt_index(s.get("step"), location, &field("step"))?
            && at != k
        {
            return Err(Error::input(
                location,
                format!(
                    "field `{}` is {at}; steps must be listed in order",
                    field("step")
                ),
            ));
        }
        let span = match s.get("span") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.len() == 2 => {
                let start = opt_index(a.first(), location, &field("span[0]"))?;
                let end = opt_index(a.get(1), location, &field("span[1]"))?;
                match (start, end) {
                    (Some(s0), Some(e0)) if s0 <= e0 => Some((s0, e0)),
                    _ => {
                        return Err(Error::input(
                            location,
                            format!(
                                "field `{}`: expected [start, end) with start ≤ end",
                                field("span")
                            ),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(Error::input(
                    location,
                    format!(
                        "field `{}`: expected [start, end), got {other}",
                        field("span")
                    ),
                ));
            }
        };
        steps.push(StepScore {
            message: opt_index(s.get("message"), location, &field("message"))?,
            n_tokens: opt_index(s.get("n_tokens"), location, &field("n_tokens"))?.unwrap_or(0),
            advantage: opt_f64(s.get("advantage"), location, &field("advantage"))?,
            logp_policy: opt_f64(s.get("logp_policy"), location, &field("logp_policy"))?,
            logp_reference: opt_f64(s.get("logp_reference"), location, &field("logp_reference"))?,
            entropy: opt_f64(s.get("entropy"), location, &field("entropy"))?,
            self_certainty: opt_f64(s.get("self_certainty"), location, &field("self_certainty"))?,
            truncated: opt_flag(s.get("truncated"), location, &field("truncated"))?,
            empty: opt_flag(s.get("empty"), location, &field("empty"))?,
            span,
        });
    }
    Ok(steps)
}

fn parse_settings(obj: &Map<String, Value>, location: &str) -> Result<ScoreSettings> {
    let Some(Value::Object(s)) = obj.get("settings") else {
        return Err(Error::input(
            location,
            "field `settings`: missing; `padv score` writes it (token_agg, step_agg, beta)",
        ));
    };
    let text = |name: &str| match s.get(name) {
        Some(Value::String(t)) => Ok(t.clone()),
        other => Err(Error::input(
            location,
            format!(
                "field `settings.{name}`: expected a string, got {}",
                shown(other)
            ),
        )),
    };
    let token_agg = text("token_agg")?
        .parse::<TokenAgg>()
        .map_err(|e| Error::input(location, format!("field `settings.token_agg`: {e}")))?;
    let step_agg = text("step_agg")?
        .parse::<StepAgg>()
        .map_err(|e| Error::input(location, format!("field `settings.step_agg`: {e}")))?;
    let beta = opt_f64(s.get("beta"), location, "settings.beta")?.unwrap_or(1.0);
    let render = s.get("render").and_then(scalar_text);
    Ok(ScoreSettings {
        token_agg,
        step_agg,
        beta,
        render,
    })
}

fn parse_tokens(t: &Value, location: &str) -> Result<TokenScores> {
    let Value::Object(t) = t else {
        return Err(Error::input(location, "field `tokens`: expected an object"));
    };
    let array = |name: &str| -> Result<Vec<f32>> {
        let Some(Value::Array(a)) = t.get(name) else {
            return Err(Error::input(
                location,
                format!("field `tokens.{name}`: expected an array (numbers or null)"),
            ));
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Null => Ok(f32::NAN),
                Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
                other => Err(Error::input(
                    location,
                    format!("field `tokens.{name}[{i}]`: expected a number or null, got {other}"),
                )),
            })
            .collect()
    };
    let scores = TokenScores {
        logp_policy: array("logp_policy")?,
        logp_reference: array("logp_reference")?,
        entropy_policy: array("entropy_policy")?,
        self_certainty: array("self_certainty")?,
    };
    let n = scores.logp_policy.len();
    for (name, len) in [
        ("logp_reference", scores.logp_reference.len()),
        ("entropy_policy", scores.entropy_policy.len()),
        ("self_certainty", scores.self_certainty.len()),
    ] {
        if len != n {
            return Err(Error::input(
                location,
                format!("field `tokens.{name}` has {len} entries, `tokens.logp_policy` has {n}"),
            ));
        }
    }
    Ok(scores)
}

fn check_tokens(tokens: &TokenScores, steps: &[StepScore], location: &str) -> Result<()> {
    let n = tokens.len();
    for (k, s) in steps.iter().enumerate() {
        match s.span {
            None => {
                return Err(Error::input(
                    location,
                    format!("field `steps[{k}].span`: missing, but token arrays are present"),
                ));
            }
            Some((_, end)) if end > n => {
                return Err(Error::input(
                    location,
                    format!("field `steps[{k}].span` ends at {end}, past the {n} tokens"),
                ));
            }
            Some((start, end)) if start > end => {
                return Err(Error::input(
                    location,
                    format!("field `steps[{k}].span` is [{start}, {end}): start after end"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `a.b.c` inside nested objects.
fn lookup<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = obj.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Strings as they are, numbers and booleans as written; nothing else.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

fn opt_f64(v: Option<&Value>, location: &str, field: &str) -> Result<Option<f64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(Error::input(
            location,
            format!("field `{field}`: expected a number or null, got {other}"),
        )),
    }
}

/// A boolean, `false` when absent or null.
fn opt_flag(v: Option<&Value>, location: &str, field: &str) -> Result<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::input(
            location,
            format!("field `{field}`: expected a boolean, got {other}"),
        )),
    }
}

/// A non-negative integer ([`crate::trajectory::json_index`]: also `3.0` or
/// `"3"`, as Who&When writes `mistake_step`); an error naming the field else.
fn opt_index(v: Option<&Value>, location: &str, field: &str) -> Result<Option<usize>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => crate::trajectory::json_index(v).map(Some).ok_or_else(|| {
            Error::input(
                location,
                format!("field `{field}`: expected a non-negative integer, got {v}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<std::result::Result<ScoredTrajectory, SkippedRecord>> {
        ScoredTrajectory::from_json(v, "t.jsonl:1", &ReadOptions::default())
    }

    fn settings() -> Value {
        json!({"token_agg": "sum", "step_agg": "mean", "beta": 0.5, "render": "template"})
    }

    #[test]
    fn a_record_parses_into_steps_labels_group_and_settings() {
        let t = parse(json!({
            "id": "a", "task_id": 7, "reward_info": {"reward": 1.0}, "mistake_step": "3",
            "steps": [
                {"step": 0, "message": 2, "n_tokens": 3, "advantage": 0.5,
                 "logp_policy": -1.0, "logp_reference": -2.0, "entropy": 0.3,
                 "self_certainty": -4.0, "truncated": false},
                {"step": 1, "message": 4, "n_tokens": 0, "advantage": null, "truncated": true},
                {"step": 2, "message": 6, "n_tokens": 0, "advantage": 0.0, "empty": true}
            ],
            "settings": settings()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(t.id, "a");
        assert_eq!(t.group.as_deref(), Some("7"));
        assert_eq!(t.labels.success, Some(true));
        assert_eq!(t.labels.reward, Some(1.0));
        assert_eq!(t.labels.mistake_step, Some(3));
        assert_eq!(t.steps.len(), 3);
        assert_eq!(t.steps[0].message, Some(2));
        assert_eq!(t.steps[1].advantage, None);
        assert!(t.steps[1].truncated && !t.steps[1].empty);
        assert!(t.steps[2].empty && !t.steps[2].truncated);
        assert_eq!(t.settings.token_agg, TokenAgg::Sum);
        assert_eq!(t.settings.beta, 0.5);
    }

    #[test]
    fn success_comes_from_success_then_reward_then_reward_info() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let l = Labels::from_record(&obj(json!({"success": false, "reward": 1.0})), "x").unwrap();
        assert_eq!((l.success, l.reward), (Some(false), Some(1.0)));
        let l = Labels::from_record(&obj(json!({"reward": 0.5})), "x").unwrap();
        assert_eq!((l.success, l.reward), (Some(false), Some(0.5)));
        let l = Labels::from_record(&obj(json!({"success": true})), "x").unwrap();
        assert_eq!((l.success, l.reward), (Some(true), Some(1.0)));
        let l = Labels::from_record(&obj(json!({})), "x").unwrap();
        assert_eq!((l.success, l.reward), (None, None));
    }

    #[test]
    fn error_records_are_skipped_not_failed() {
        let s = parse(json!({"id": "b", "error": "too long"}))
            .unwrap()
            .unwrap_err();
        assert_eq!(s.id.as_deref(), Some("b"));
        assert_eq!(s.error, "too long");
    }

    #[test]
    fn bad_fields_are_errors_that_name_the_line_and_field() {
        let e = parse(json!({"id": "c", "steps": [{"advantage": "high"}], "settings": settings()}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.jsonl:1") && e.contains("steps[0].advantage"),
            "{e}"
        );
        let e = parse(json!({"id": "c", "steps": []}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("settings"), "{e}");
        let e = parse(json!({"id": "c", "steps": [], "settings": settings(), "failure_step": -1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("failure_step"), "{e}");
    }

    #[test]
    fn token_arrays_must_cover_every_step_span() {
        let tokens = json!({"token_ids": [1, 2, 3], "logp_policy": [null, -1.0, -2.0],
            "logp_reference": [null, -1.5, -2.5], "advantage": [null, 0.5, 0.5],
            "entropy_policy": [null, 0.1, 0.2], "self_certainty": [null, -3.0, -3.0],
            "action_mask": [0, 1, 1]});
        let ok = parse(
            json!({"id": "d", "steps": [{"span": [1, 3]}], "tokens": tokens,
            "settings": settings()}),
        )
        .unwrap()
        .unwrap();
        let t = ok.tokens.unwrap();
        assert!(t.logp_policy[0].is_nan());
        assert_eq!(t.logp_reference[2], -2.5);
        let e = parse(
            json!({"id": "d", "steps": [{"span": [1, 4]}], "tokens": tokens,
            "settings": settings()}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("past the 3 tokens"), "{e}");
    }

    #[test]
    fn jsonl_parsing_counts_error_lines_and_skips_blank_ones() {
        let text = format!(
            "{}\n\n{}\n",
            json!({"id": "e", "steps": [], "settings": settings(), "task_id": "g"}),
            json!({"id": "f", "error": "oom"})
        );
        let set = parse_scored(text.as_bytes(), "mem", &ReadOptions::default()).unwrap();
        assert_eq!(set.trajectories.len(), 1);
        assert_eq!(set.skipped.len(), 1);
        assert_eq!(set.skipped[0].location, "mem:3");
        let e = parse_scored("{not json".as_bytes(), "mem", &ReadOptions::default()).unwrap_err();
        assert!(e.to_string().starts_with("mem:1: invalid JSON"), "{e}");
    }

    #[test]
    fn skipping_invalid_lines_counts_them_with_their_line_and_id() {
        let good = json!({"id": "g", "steps": [], "settings": settings()});
        let mut text = b"{not json\n".to_vec();
        text.extend(b"{\"id\": \"\xff\"}\n");
        text.extend(format!("{}\n", json!({"id": "n", "steps": 3})).as_bytes());
        text.extend(format!("{good}\n").as_bytes());
        let opts = ReadOptions {
            skip_invalid: true,
            ..ReadOptions::default()
        };
        let set = parse_scored(&text[..], "mem", &opts).unwrap();
        assert_eq!(set.trajectories.len(), 1);
        let skipped: Vec<_> = set
            .skipped
            .iter()
            .map(|s| (s.location.as_str(), s.id.as_deref()))
            .collect();
        assert_eq!(
            skipped,
            [("mem:1", None), ("mem:2", None), ("mem:3", Some("n"))]
        );
        assert!(
            set.skipped[1].error.contains("UTF-8"),
            "{:?}",
            set.skipped[1]
        );
    }

    #[test]
    fn in_memory_trajectories_take_labels_and_group_from_their_input_record() {
        let steps = vec![StepScore::default()];
        let input = json!({"id": "m", "task_id": "t9", "reward": 0.25, "failure_step": 0});
        let t = ScoredTrajectory::new("m", steps, ScoreSettings::default())
            .with_input_record(input, &ReadOptions::default())
            .unwrap();
        assert_eq!(t.group.as_deref(), Some("t9"));
        assert_eq!(t.labels.success, Some(false));
        assert_eq!(t.labels.reward, Some(0.25));
        assert_eq!(t.labels.failure_step, Some(0));
        assert_eq!(t.record.unwrap()["id"], "m");
    }

    #[test]
    fn group_by_reaches_into_nested_objects() {
        let opts = ReadOptions {
            group_by: "meta.task".into(),
            ..ReadOptions::default()
        };
        let v = json!({"id": "h", "steps": [], "settings": settings(), "meta": {"task": "q1"}});
        let t = ScoredTrajectory::from_json(v, "x", &opts).unwrap().unwrap();
        assert_eq!(t.group.as_deref(), Some("q1"));
    }
}
