//! The scoring pipeline as a library: [`Scorer`] loads a policy/reference
//! pair and its tokenizer, encodes records (render + tokenize), batches them
//! under a token budget, runs the backend, and turns per-token scores into
//! step scores, a trajectory score and the baselines.
//!
//! ```
//! use padv::pipeline::{Scorer, ScorerOptions};
//! use padv::trajectory::read_records;
//! # fn main() -> padv::Result<()> {
//! let dir = padv::toyworld::dir()?; // the bundled pair and demo
//! let mut scorer = Scorer::load(&dir.join("models/trained"), &dir.join("models/ref"), ScorerOptions::default())?;
//! let records: Vec<_> = read_records(&dir.join("demo_trained.jsonl"), None)?.into_iter().collect::<Result<_, _>>()?;
//! for scored in scorer.score(&records[..2]) {
//!     let s = scored?;
//!     println!("{}: score {:?}, {} steps", s.record.id, s.score, s.steps.len());
//! }
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value, json};

use crate::backend::{ComputeDtype, Device, PairScorer, SeqRequest, open_pair_with};
use crate::kv::{CacheStats, KvOptions};
use crate::model::{MergeOptions, MergePlan, Model};
use crate::score::aggregate::{StepAgg, TokenAgg};
use crate::score::{
    Aggregation, Method, ScoreSettings, ScoredTrajectory, StepScore, TokenScores, num,
};
use crate::tokenizer::TokenizerBundle;
use crate::trajectory::{self, Body, Encoded, Record, RenderMode};
use crate::{Error, Result};

/// Everything that shapes how records are scored.
#[derive(Debug, Clone)]
pub struct ScorerOptions {
    pub device: Device,
    /// `None`: the template when the tokenizer has one, else plain.
    pub render: Option<RenderMode>,
    pub token_agg: TokenAgg,
    pub step_agg: StepAgg,
    pub beta: f64,
    /// Keep only the last N tokens of each record.
    pub max_length: Option<usize>,
    /// Tokens per forward batch (several records share a batch).
    pub batch_tokens: usize,
    /// Score every position and emit token arrays (not only action tokens).
    pub with_tokens: bool,
    /// Reuse the K/V of shared token prefixes across records and calls ([`crate::kv`]).
    pub prefix_cache: bool,
    /// Prefix-cache budget in MiB; `None`: [`crate::kv::default_budget_bytes`].
    pub kv_cache_mb: Option<usize>,
    /// The arithmetic of both backends ([`ComputeDtype`]): on CUDA the
    /// upload dtype (`Auto`: the checkpoint's), on the CPU f32 (`Auto`) or
    /// bf16 GEMMs.
    pub compute_dtype: ComputeDtype,
    /// Make a render warning (a chat template that drops an action's tool
    /// calls, see [`Encoded::warnings`]) the record's error.
    pub strict: bool,
    /// Replace the reference by its weight-space merge with the policy, π_α
    /// ([`crate::model::merge`]); α changes with [`Scorer::set_alpha`].
    pub merge: Option<MergeOptions>,
}

/// The largest |β| accepted: past it `β·(log π_θ − log π_ref)` can overflow
/// to ±inf for a long action scored with `sum` (1e308 certainly does).
pub const MAX_BETA: f64 = 1e6;

/// β as the CLI and the HTTP API accept it: finite, |β| ≤ [`MAX_BETA`];
/// the error is the reason, for the caller to put after the field's name.
pub fn check_beta(beta: f64) -> std::result::Result<f64, String> {
    if beta.is_finite() && beta.abs() <= MAX_BETA {
        Ok(beta)
    } else {
        Err(format!(
            "must be a finite number with |β| ≤ {MAX_BETA:e}, got {beta}"
        ))
    }
}

impl ScorerOptions {
    /// The checks [`Scorer::load`] makes: a usable β, a token budget and a
    /// length limit of at least one token.
    pub fn validate(&self) -> Result<()> {
        check_beta(self.beta).map_err(|e| Error::input("beta", e))?;
        if self.batch_tokens == 0 {
            return Err(Error::input("batch_tokens", "must be at least 1"));
        }
        if self.max_length == Some(0) {
            return Err(Error::input("max_length", "must be at least 1"));
        }
        if let Some(m) = &self.merge {
            m.validate()?;
        }
        Ok(())
    }
}

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions {
            device: Device::Auto,
            render: None,
            token_agg: TokenAgg::Mean,
            step_agg: StepAgg::Mean,
            beta: 1.0,
            max_length: None,
            batch_tokens: 8192,
            with_tokens: false,
            prefix_cache: true,
            kv_cache_mb: None,
            compute_dtype: ComputeDtype::Auto,
            strict: false,
            merge: None,
        }
    }
}

/// One record after scoring.
#[derive(Debug, Clone)]
pub struct ScoredRecord {
    pub record: Record,
    pub encoded: Encoded,
    pub tokens: TokenScores,
    /// One per action, in order (empty for text / bare token-id records).
    pub steps: Vec<StepScore>,
    /// Trajectory score (`step_agg` of the step advantages); `None` without steps.
    pub score: Option<f64>,
    /// Every baseline's trajectory score, by method name.
    pub baselines: Vec<(Method, Option<f64>)>,
    /// The merged reference it was scored against (with its α), if any.
    pub merge: Option<MergeOptions>,
}

impl ScoredRecord {
    /// Whether the record is an agent trajectory (has action steps) rather
    /// than a text / token sequence scored token by token.
    pub fn is_trajectory(&self) -> bool {
        has_actions(&self.record.body)
    }
}

/// Chat records and token records with action spans are trajectories; text
/// and bare token ids are scored token by token.
fn has_actions(body: &Body) -> bool {
    match body {
        Body::Chat(_) => true,
        Body::Tokens { action_spans, .. } => action_spans.is_some(),
        Body::Text { .. } => false,
    }
}

pub struct Scorer {
    pub policy: Arc<Model>,
    /// The reference scored against: π_α when merging.
    pub reference: Arc<Model>,
    /// The reference checkpoint itself, and the merge plan (keep rules found
    /// once; every α reuses them).
    stored_reference: Arc<Model>,
    plan: Option<Arc<MergePlan>>,
    pub tokenizer: TokenizerBundle,
    backend: Box<dyn PairScorer>,
    render: RenderMode,
    opts: ScorerOptions,
    /// Records whose non-finite log-prob was traced to a layer so far
    /// (bounded by [`TRACE_NONFINITE_AT_MOST`]).
    traced: AtomicUsize,
}

/// Records whose non-finite log-prob is traced to the first non-finite
/// layer (each trace is one more CPU forward of that record); later ones
/// are reported without the layer.
const TRACE_NONFINITE_AT_MOST: usize = 8;

impl Scorer {
    /// Load both checkpoints and the (shared) tokenizer; fail early when the
    /// two models cannot be scored together. Each is a directory or a hub id
    /// found in the local Hugging Face cache ([`crate::hub`]).
    pub fn load(policy: &Path, reference: &Path, opts: ScorerOptions) -> Result<Scorer> {
        opts.validate()?;
        let policy = &crate::hub::resolve_model(policy)?;
        let reference = &crate::hub::resolve_model(reference)?;
        let tokenizer = TokenizerBundle::load(policy)?;
        let ref_tok = TokenizerBundle::load(reference)?;
        tokenizer.same_as(&ref_tok)?;
        let policy = Arc::new(Model::load(policy)?);
        let stored_reference = Arc::new(Model::load(reference)?);
        crate::model::check_pair(&policy, &stored_reference)?;
        let (reference, plan) = match &opts.merge {
            None => (stored_reference.clone(), None),
            Some(m) => {
                let plan = Arc::new(MergePlan::new(&stored_reference, policy.clone(), m)?);
                let merged = stored_reference.merged(plan.clone(), m.alpha)?;
                (Arc::new(merged), Some(plan))
            }
        };
        let mut backend = open_pair_with(
            opts.device,
            policy.clone(),
            reference.clone(),
            opts.compute_dtype,
        )?;
        if opts.prefix_cache {
            backend.set_prefix_cache(Some(KvOptions::with_budget_mb(opts.kv_cache_mb)))?;
        }
        let render = opts
            .render
            .unwrap_or_else(|| RenderMode::default_for(&tokenizer));
        Ok(Scorer {
            policy,
            reference,
            stored_reference,
            plan,
            tokenizer,
            backend,
            render,
            opts,
            traced: AtomicUsize::new(0),
        })
    }

    pub fn options(&self) -> &ScorerOptions {
        &self.opts
    }

    /// Change how records are rendered, scored and aggregated without
    /// reloading the pair (a server applies each request's options this way).
    /// The device and the merge are fixed at load and kept (α changes with
    /// [`Scorer::set_alpha`]).
    pub fn set_options(&mut self, opts: ScorerOptions) {
        self.render = opts
            .render
            .unwrap_or_else(|| RenderMode::default_for(&self.tokenizer));
        self.opts = ScorerOptions {
            device: self.opts.device,
            merge: self.opts.merge.clone(),
            ..opts
        };
    }

    /// The merged reference's α, `None` without a merge.
    pub fn alpha(&self) -> Option<f64> {
        self.opts.merge.as_ref().map(|m| m.alpha)
    }

    /// Score against π_α from now on: the merged views are re-formed over
    /// the same mapped files (nothing is reloaded; the keep rules are
    /// reused) and the prefix cache starts afresh, so no cached block
    /// crosses α values. An error without a merge or for α outside [0, 1].
    pub fn set_alpha(&mut self, alpha: f64) -> Result<()> {
        let (Some(plan), Some(m)) = (&self.plan, &self.opts.merge) else {
            return Err(Error::input(
                "alpha",
                "the scorer has no merged reference (load it with a merge)",
            ));
        };
        if m.alpha == alpha {
            return Ok(());
        }
        let merged = Arc::new(self.stored_reference.merged(plan.clone(), alpha)?);
        self.backend.set_reference(merged.clone())?;
        self.reference = merged;
        self.opts.merge = Some(m.at(alpha));
        Ok(())
    }

    /// Score `records` against π_α for every α of `alphas`, in one pass
    /// over the policy: its log-probs are computed at the first α and reused,
    /// later α values run the reference side only. One result list per α,
    /// in order; the scorer is left at the last α.
    pub fn score_sweep(
        &mut self,
        records: &[Record],
        alphas: &[f64],
    ) -> Result<Vec<Vec<Result<ScoredRecord>>>> {
        let Some((&first, rest)) = alphas.split_first() else {
            return Ok(Vec::new());
        };
        // Each α once: a repeated one would write every record twice.
        if let Some((i, a)) = alphas
            .iter()
            .enumerate()
            .find(|(i, a)| alphas[..*i].contains(a))
        {
            return Err(Error::input(
                "alpha",
                format!(
                    "α = {a} is given twice (value {} of the list); each α once",
                    i + 1
                ),
            ));
        }
        self.set_alpha(first)?;
        let base = self.score(records);
        let mut out = Vec::with_capacity(alphas.len());
        for &alpha in rest {
            self.set_alpha(alpha)?;
            let encoded = base
                .iter()
                .zip(records)
                .map(|(b, r)| match b {
                    Ok(b) => Ok(b.encoded.clone()),
                    Err(e) => Err(Error::input(&r.location, strip_location(e, &r.location))),
                })
                .collect();
            out.push(self.score_encoded(records, encoded, Some(&base)));
        }
        out.insert(0, base);
        Ok(out)
    }

    pub fn render_mode(&self) -> RenderMode {
        self.render
    }

    /// A warning when chat records will be rendered plain without being asked
    /// to ([`render_fallback`]).
    pub fn render_fallback(&self) -> Option<String> {
        render_fallback(&self.tokenizer, self.opts.render)
    }

    pub fn backend_description(&self) -> String {
        self.backend.describe()
    }

    /// The backend's prefix-cache counters (hit and computed tokens, …).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.backend.cache_stats()
    }

    pub fn settings(&self) -> ScoreSettings {
        ScoreSettings {
            token_agg: self.opts.token_agg,
            step_agg: self.opts.step_agg,
            beta: self.opts.beta,
            render: Some(self.render.name().to_string()),
        }
    }

    /// Render + tokenize + truncate one record, and check it fits the model
    /// (and, with `strict`, that the render lost nothing).
    pub fn encode(&self, record: &Record) -> Result<Encoded> {
        let enc = trajectory::encode(record, &self.tokenizer, self.render, self.opts.max_length)?;
        if self.opts.strict
            && let Some(w) = enc.warnings.first()
        {
            return Err(Error::input(&record.location, format!("{w} (--strict)")));
        }
        if enc.token_ids.is_empty() {
            return Err(Error::input(&record.location, "the record has no tokens"));
        }
        trajectory::check_token_ids(
            &record.location,
            &enc.token_ids,
            self.policy.config.vocab_size,
        )?;
        let limit = self.policy.config.max_position_embeddings;
        if enc.token_ids.len() > limit {
            return Err(Error::input(
                &record.location,
                format!(
                    "{} tokens exceed the model's context of {limit} (use --max-length to truncate from the left)",
                    enc.token_ids.len()
                ),
            ));
        }
        Ok(enc)
    }

    /// Score records; one result per record, in order. Records are batched
    /// under `batch_tokens`; an error in one record does not affect others.
    pub fn score(&mut self, records: &[Record]) -> Vec<Result<ScoredRecord>> {
        let encoded: Vec<Result<Encoded>> = records.iter().map(|r| self.encode(r)).collect();
        self.score_encoded(records, encoded, None)
    }

    /// [`Scorer::score`] of encoded records; with `policy` (an earlier
    /// pass over the same records), the backend scores the reference only
    /// and each record's policy fields come from there.
    fn score_encoded(
        &mut self,
        records: &[Record],
        encoded: Vec<Result<Encoded>>,
        policy: Option<&[Result<ScoredRecord>]>,
    ) -> Vec<Result<ScoredRecord>> {
        let mut out: Vec<Option<Result<ScoredRecord>>> = (0..records.len()).map(|_| None).collect();
        let mut batch: Vec<usize> = Vec::new();
        let mut batch_tokens = 0usize;
        let flush = |batch: &mut Vec<usize>,
                     this: &mut Scorer,
                     out: &mut Vec<Option<Result<ScoredRecord>>>| {
            if batch.is_empty() {
                return;
            }
            let reqs: Vec<SeqRequest> = batch
                .iter()
                .map(|&i| {
                    this.request(
                        &records[i],
                        encoded[i]
                            .as_ref()
                            .expect("only encoded records are batched"),
                    )
                })
                .collect();
            let scores = match policy {
                None => this.backend.score(&reqs),
                Some(_) => this.backend.score_reference(&reqs),
            };
            match scores {
                Ok(scores) => {
                    for (&i, mut tokens) in batch.iter().zip(scores) {
                        if let Some(Ok(p)) = policy.map(|p| &p[i]) {
                            tokens.logp_policy.clone_from(&p.tokens.logp_policy);
                            tokens.entropy_policy.clone_from(&p.tokens.entropy_policy);
                            tokens.self_certainty.clone_from(&p.tokens.self_certainty);
                        }
                        let enc = encoded[i].as_ref().expect("encoded").clone();
                        out[i] = Some(this.finish(records[i].clone(), enc, tokens));
                    }
                }
                Err(e) => {
                    for &i in batch.iter() {
                        out[i] = Some(Err(Error::input(&records[i].location, e.to_string())));
                    }
                }
            }
            batch.clear();
        };
        // With the prefix cache, records sharing a prefix go to one batch.
        let mut order: Vec<usize> = (0..records.len()).collect();
        if self.opts.prefix_cache {
            let key = |i: usize| encoded[i].as_ref().map(|e| &e.token_ids[..]).ok();
            order.sort_by(|&a, &b| key(a).cmp(&key(b)));
        }
        for i in order {
            let enc = &encoded[i];
            match enc {
                Err(e) => {
                    out[i] = Some(Err(Error::input(
                        &records[i].location,
                        strip_location(e, &records[i].location),
                    )))
                }
                Ok(enc) => {
                    if batch_tokens + enc.token_ids.len() > self.opts.batch_tokens
                        && !batch.is_empty()
                    {
                        flush(&mut batch, self, &mut out);
                        batch_tokens = 0;
                    }
                    batch.push(i);
                    batch_tokens += enc.token_ids.len();
                }
            }
        }
        flush(&mut batch, self, &mut out);
        out.into_iter()
            .map(|r| r.expect("every record has a result"))
            .collect()
    }

    /// Which positions need the LM head: action tokens for trajectories
    /// (unless token arrays are asked for); `None`: every position.
    fn score_mask(&self, record: &Record, enc: &Encoded) -> Option<Vec<bool>> {
        (has_actions(&record.body) && !self.opts.with_tokens)
            .then(|| enc.action_mask().iter().map(|&m| m == 1).collect())
    }

    fn request(&self, record: &Record, enc: &Encoded) -> SeqRequest {
        SeqRequest {
            token_ids: enc.token_ids.clone(),
            score_mask: self.score_mask(record, enc),
        }
    }

    /// Token scores → step scores, trajectory score and baselines. An error
    /// when a log-prob the scores are built from is not finite: a score is
    /// never made of missing or non-finite numbers.
    pub fn finish(
        &self,
        record: Record,
        encoded: Encoded,
        tokens: TokenScores,
    ) -> Result<ScoredRecord> {
        let mask = self.score_mask(&record, &encoded);
        if let Some((model, t, v)) = first_nonfinite_logp(&tokens, mask.as_deref()) {
            return Err(self.nonfinite(&record.location, model, t, v, &encoded.token_ids));
        }
        let (ta, beta) = (self.opts.token_agg, self.opts.beta);
        let steps: Vec<StepScore> = encoded
            .actions
            .iter()
            .map(|a| {
                let span = a.scored();
                let mean = |v: &[f32]| TokenAgg::Mean.apply(&v[span.clone()]);
                if a.truncated || a.is_empty() {
                    // An action that lost tokens to max_length, or that
                    // rendered to none, scores 0 and is flagged as such.
                    return StepScore {
                        message: Some(a.message_index),
                        n_tokens: a.len(),
                        advantage: Some(0.0),
                        truncated: a.truncated,
                        empty: !a.truncated,
                        span: Some((a.start, a.end)),
                        ..StepScore::default()
                    };
                }
                let lp = ta.apply(&tokens.logp_policy[span.clone()]);
                let lr = ta.apply(&tokens.logp_reference[span.clone()]);
                StepScore {
                    message: Some(a.message_index),
                    n_tokens: a.len(),
                    advantage: lp.zip(lr).map(|(p, r)| beta * (p - r)),
                    logp_policy: lp,
                    logp_reference: lr,
                    entropy: mean(&tokens.entropy_policy),
                    self_certainty: mean(&tokens.self_certainty),
                    truncated: false,
                    empty: false,
                    span: Some((a.start, a.end)),
                }
            })
            .collect();
        let mut scored = ScoredRecord {
            record,
            encoded,
            tokens,
            steps,
            score: None,
            baselines: Vec::new(),
            merge: self.opts.merge.clone(),
        };
        if scored.is_trajectory() && !scored.steps.is_empty() {
            let t = ScoredTrajectory::new(
                scored.record.id.clone(),
                scored.steps.clone(),
                self.settings(),
            );
            let agg = Aggregation::stored(self.opts.step_agg);
            for m in Method::ALL {
                let v = t.score(m, agg).ok().flatten();
                if m == Method::ProgressAdvantage {
                    scored.score = v;
                }
                scored.baselines.push((m, v));
            }
        }
        Ok(scored)
    }

    /// The JSON line `padv score` writes for a record.
    pub fn to_json(&self, s: &ScoredRecord) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), Value::String(s.record.id.clone()));
        for (k, v) in &s.record.passthrough {
            if k != "id" {
                o.insert(k.clone(), v.clone());
            }
        }
        let arrays = |o: &mut Map<String, Value>| {
            let f = |v: &[f32]| Value::Array(v.iter().map(|&x| num(x as f64)).collect());
            o.insert("token_ids".into(), json!(s.encoded.token_ids));
            o.insert("logp_policy".into(), f(&s.tokens.logp_policy));
            o.insert("logp_reference".into(), f(&s.tokens.logp_reference));
            o.insert("advantage".into(), f(&s.tokens.advantage()));
            o.insert("entropy_policy".into(), f(&s.tokens.entropy_policy));
            o.insert("self_certainty".into(), f(&s.tokens.self_certainty));
        };
        if let Some(m) = &s.merge {
            o.insert("alpha".into(), num(m.alpha));
        }
        let warnings = &s.encoded.warnings;
        if !warnings.is_empty() {
            let texts: Vec<&str> = warnings.iter().map(|w| w.text.as_str()).collect();
            o.insert("warnings".into(), json!(texts));
        }
        if !s.is_trajectory() {
            arrays(&mut o);
            return Value::Object(o);
        }
        let steps: Vec<Value> = s
            .steps
            .iter()
            .enumerate()
            .map(|(k, st)| {
                let own: Vec<&str> = (warnings.iter())
                    .filter(|w| w.message.is_some() && w.message == st.message)
                    .map(|w| w.text.as_str())
                    .collect();
                let mut step = json!({
                    "step": k,
                    "message": st.message,
                    "n_tokens": st.n_tokens,
                    "advantage": opt(st.advantage),
                    "logp_policy": opt(st.logp_policy),
                    "logp_reference": opt(st.logp_reference),
                    "entropy": opt(st.entropy),
                    "self_certainty": opt(st.self_certainty),
                    "truncated": st.truncated,
                    "empty": st.empty,
                    "span": st.span.map(|(a, b)| json!([a, b])),
                });
                // The step's own warnings, so that a session step or a
                // candidate answered alone still carries them.
                if !own.is_empty() {
                    step["warnings"] = json!(own);
                }
                step
            })
            .collect();
        o.insert("steps".into(), Value::Array(steps));
        o.insert("score".into(), opt(s.score));
        let baselines: Map<String, Value> = s
            .baselines
            .iter()
            .filter(|(m, _)| *m != Method::ProgressAdvantage)
            .map(|(m, v)| (m.name().to_string(), opt(*v)))
            .collect();
        o.insert("baselines".into(), Value::Object(baselines));
        let mut settings = json!({
            "token_agg": self.opts.token_agg.name(),
            "step_agg": self.opts.step_agg.name(),
            "beta": self.opts.beta,
            "render": self.render.name(),
        });
        if let Some(m) = &s.merge {
            settings["merge"] = m.to_json();
        }
        o.insert("settings".into(), settings);
        if self.opts.with_tokens {
            arrays(&mut o);
            o.insert("action_mask".into(), json!(s.encoded.action_mask()));
        }
        Value::Object(o)
    }
}

/// Why chat records will be rendered plain although no render mode was
/// asked for: the policy's tokenizer has no chat template. `None` when a
/// mode was given or the template is there.
pub fn render_fallback(tokenizer: &TokenizerBundle, render: Option<RenderMode>) -> Option<String> {
    (render.is_none() && tokenizer.chat_template().is_none()).then(|| {
        format!(
            "{} has no chat template (no `chat_template` in tokenizer_config.json, no \
             chat_template.jinja): chat records are rendered plain (`[role]: content`), which \
             scores differently from the model's own chat format; pass --render plain to choose \
             it explicitly",
            tokenizer.dir().display()
        )
    })
}

/// The first scored position (`mask[t]`, or every `t ≥ 1`) whose policy or
/// reference log-prob is NaN or infinite: (model, position, value).
fn first_nonfinite_logp(
    tokens: &TokenScores,
    mask: Option<&[bool]>,
) -> Option<(&'static str, usize, f32)> {
    (1..tokens.len())
        .filter(|&t| mask.is_none_or(|m| m.get(t).copied().unwrap_or(false)))
        .find_map(|t| {
            [
                ("policy", tokens.logp_policy[t]),
                ("reference", tokens.logp_reference[t]),
            ]
            .into_iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(model, v)| (model, t, v))
        })
}

impl Scorer {
    /// The error for a non-finite log-prob, naming where in the model the
    /// numbers first stop being finite: only now, for the first few such
    /// records, is the record run again through the CPU forward with a
    /// finite scan after each layer.
    fn nonfinite(&self, location: &str, model: &str, t: usize, v: f32, ids: &[u32]) -> Error {
        let m = if model == "policy" {
            &self.policy
        } else {
            &self.reference
        };
        let traced = self.traced.fetch_add(1, Ordering::Relaxed) < TRACE_NONFINITE_AT_MOST;
        let stage = match traced.then(|| crate::backend::cpu::forward::first_nonfinite(m, ids)) {
            Some(Ok(Some(stage))) => {
                format!("; its hidden state is first not finite after {stage}")
            }
            Some(Ok(None)) => "; its hidden states are finite, its LM head is not".to_string(),
            _ => String::new(),
        };
        Error::input(
            location,
            format!(
                "{model} log-prob at token position {t} is not finite ({v}){stage}: the {model} \
                 checkpoint computes non-finite values (NaN/Inf weights, or a config value out \
                 of range); no score is given"
            ),
        )
    }
}

fn opt(x: Option<f64>) -> Value {
    x.map_or(Value::Null, num)
}

/// An error's message without a leading `location: ` (it is re-attached once).
fn strip_location(e: &Error, location: &str) -> String {
    let s = e.to_string();
    s.strip_prefix(&format!("{location}: "))
        .map(str::to_string)
        .unwrap_or(s)
}
