//! The scoring worker: one thread owns the [`Scorer`] (both models and, in
//! the backend, their prefix cache) and serves a bounded queue of jobs.
//!
//! Continuous batching at request granularity, in the spirit of vLLM's
//! scheduler but without preemption: the worker blocks for one job, then
//! drains whatever else is queued until the round's estimated tokens reach
//! one forward batch (`batch_tokens`); a job that would overflow the round
//! waits for the next one. The round's records, from every job, are grouped
//! by priority (session steps an agent waits on before whole trajectories)
//! and by scoring options (most requests share the server's defaults); each
//! group goes through `Scorer::score` in chunks of about one forward batch,
//! and each job is answered as soon as its last record is scored. Between
//! chunks the worker drops jobs whose request has timed out or gone away, so
//! an abandoned large request does not hold up the ones queued behind it.
//!
//! A full queue is answered at once (`429`) by the HTTP side; the worker
//! never blocks a producer. A panic while scoring is caught and answered as
//! an error for the records of that chunk, and the worker goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::api::ApiError;
use super::metrics::Metrics;
use crate::model::Model;
use crate::pipeline::{ScoredRecord, Scorer, ScorerOptions};
use crate::score::aggregate::{StepAgg, TokenAgg};
use crate::trajectory::{Body, Record, RenderMode};
use crate::{Error, Result};

/// One record scored: its `padv score` JSON line and its length in tokens.
#[derive(Debug, Clone)]
pub struct Scored {
    pub json: Value,
    pub n_tokens: usize,
}

/// The answer to a job: one result per record, in order.
pub type Outcome = Vec<Result<Scored, String>>;

/// Which work goes first within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// A session step an agent is waiting on: scored first in its round.
    Interactive,
    /// Whole trajectories (`/v1/score`): after the interactive work.
    Bulk,
}

/// Records to score with one set of options, and where to send the results.
pub struct Job {
    records: Vec<Record>,
    opts: ScorerOptions,
    priority: Priority,
    deadline: Instant,
    enqueued: Instant,
    tokens: usize,
    reply: oneshot::Sender<Outcome>,
}

enum Msg {
    Job(Job),
    Stop,
}

/// The producer side of the queue, shared by the request handlers.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Enqueue without waiting: a full queue is `429`, a stopped worker `503`.
    pub fn submit(
        &self,
        records: Vec<Record>,
        opts: ScorerOptions,
        priority: Priority,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Outcome>, ApiError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            tokens: records.iter().map(estimate_tokens).sum(),
            records,
            opts,
            priority,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        // Count first: the worker may take the job before `try_send` returns.
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Job(job)) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::busy(
                        format!(
                            "the scoring queue is full ({} requests waiting); retry later",
                            self.metrics.queue_capacity
                        ),
                        1,
                    ),
                    TrySendError::Disconnected(_) => ApiError {
                        retry_after: Some(1),
                        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")
                    },
                })
            }
        }
    }

    /// Ask the worker to stop once every job queued so far is done. Blocks
    /// while the queue is full.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// A loaded worker: its queue, a description of the pair for `/v1/models`,
/// and the thread to join after [`Queue::stop`].
pub struct Worker {
    pub queue: Queue,
    pub models: Value,
    pub thread: JoinHandle<()>,
}

/// Load the pair on a new thread (a device context belongs to the thread
/// that made it) and start serving the queue. Returns once loaded.
pub fn spawn(
    policy: PathBuf,
    reference: PathBuf,
    opts: ScorerOptions,
    capacity: usize,
    metrics: Arc<Metrics>,
) -> Result<Worker> {
    let (tx, rx) = sync_channel::<Msg>(capacity.max(1));
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<Value>>();
    let m = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("padv-scorer".into())
        .spawn(move || {
            let mut scorer = match Scorer::load(&policy, &reference, opts) {
                Ok(s) => s,
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                    return;
                }
            };
            let names = [model_name(&policy), model_name(&reference)];
            let _ = loaded_tx.send(Ok(describe(&scorer, names)));
            serve_queue(&mut scorer, &rx, &m);
        })
        .map_err(|e| Error::Backend(format!("cannot start the scoring thread: {e}")))?;
    let models = loaded_rx
        .recv()
        .map_err(|_| Error::Backend("the scoring thread stopped while loading".into()))??;
    Ok(Worker {
        queue: Queue { tx, metrics },
        models,
        thread,
    })
}

/// How `/v1/models` names a model given as `spec`: a hub id as given
/// (`Qwen/Qwen3-0.6B`), a directory by its last component. Never the
/// absolute path, which would tell clients about the server's file system.
pub fn model_name(spec: &std::path::Path) -> String {
    if spec.is_dir() {
        let full = spec.canonicalize().unwrap_or_else(|_| spec.to_path_buf());
        if let Some(name) = full.file_name() {
            return name.to_string_lossy().into_owned();
        }
    }
    spec.to_string_lossy().into_owned()
}

/// `/v1/models`: the pair, dtype, device, architecture and defaults.
fn describe(scorer: &Scorer, [policy, reference]: [String; 2]) -> Value {
    let model = |m: &Model, name: String| {
        let c = &m.config;
        json!({
            "name": name,
            "architecture": c.arch_name,
            "dtype": m.dtype().name(),
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "heads": c.attention_heads().0,
            "kv_heads": c.attention_heads().1,
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_position_embeddings,
        })
    };
    let o = scorer.options();
    json!({
        "policy": model(&scorer.policy, policy),
        "reference": model(&scorer.reference, reference),
        "device": scorer.backend_description(),
        "merge": o.merge.as_ref().map(|m| m.to_json()),
        "defaults": {
            "render": scorer.render_mode().name(),
            "token_agg": o.token_agg.name(),
            "step_agg": o.step_agg.name(),
            "beta": o.beta,
            "tokens": o.with_tokens,
            "max_length": o.max_length,
            "batch_tokens": o.batch_tokens,
        },
    })
}

fn serve_queue(scorer: &mut Scorer, rx: &Receiver<Msg>, metrics: &Metrics) {
    let budget = scorer.options().batch_tokens.max(1);
    let base = scorer.options().clone();
    let mut carry: Option<Job> = None;
    let mut stopping = false;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None if stopping => break,
            None => match rx.recv() {
                Ok(Msg::Job(j)) => {
                    metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    j
                }
                Ok(Msg::Stop) | Err(_) => break,
            },
        };
        let mut tokens = first.tokens;
        let mut round = vec![first];
        while !stopping && tokens < budget {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => {
                    metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    if tokens + j.tokens > budget {
                        carry = Some(j);
                        break;
                    }
                    tokens += j.tokens;
                    round.push(j);
                }
                Ok(Msg::Stop) => stopping = true,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let start = Instant::now();
        // A panic outside scoring proper (a bug) costs its round's answers
        // (their requests get 500), not the worker.
        if catch_unwind(AssertUnwindSafe(|| {
            run_round(scorer, round, budget, metrics)
        }))
        .is_err()
        {
            eprintln!("padv serve: internal error in a worker round (panic caught)");
        }
        metrics
            .worker_busy_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        // Later jobs take the server's defaults unless they ask otherwise.
        scorer.set_options(base.clone());
    }
}

/// The options that change how a record is scored, as a grouping key.
type OptionsKey = (Option<RenderMode>, TokenAgg, StepAgg, u64, bool);

fn key(o: &ScorerOptions) -> OptionsKey {
    (
        o.render,
        o.token_agg,
        o.step_agg,
        o.beta.to_bits(),
        o.with_tokens,
    )
}

/// The records of a round that share a priority and scoring options, as
/// (job, record) indices.
struct Group {
    priority: Priority,
    key: OptionsKey,
    opts: ScorerOptions,
    entries: Vec<(usize, usize)>,
}

/// A job of the round being scored: its records (taken when batched), its
/// results so far, and how many are still to come.
struct Pending {
    priority: Priority,
    opts: ScorerOptions,
    deadline: Instant,
    /// `None` once answered or dropped.
    reply: Option<oneshot::Sender<Outcome>>,
    records: Vec<Option<Record>>,
    results: Vec<Option<Result<Scored, String>>>,
    left: usize,
}

impl Pending {
    fn new(job: Job) -> Pending {
        let records: Vec<Option<Record>> = job.records.into_iter().map(Some).collect();
        Pending {
            priority: job.priority,
            opts: job.opts,
            deadline: job.deadline,
            reply: Some(job.reply),
            results: (0..records.len()).map(|_| None).collect(),
            left: records.len(),
            records,
        }
    }

    /// Dropped because its request timed out or went away (counted once).
    fn drop_if_abandoned(&mut self, now: Instant, metrics: &Metrics) {
        let gone = self
            .reply
            .as_ref()
            .is_some_and(|r| r.is_closed() || now >= self.deadline);
        if gone {
            self.reply = None;
            metrics.jobs_abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Send the results once the last one is in (a job answers as soon as
    /// it is done, not at the end of the round).
    fn reply_if_done(&mut self) {
        if self.left > 0 {
            return;
        }
        if let Some(reply) = self.reply.take() {
            let outcome: Outcome = std::mem::take(&mut self.results)
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err("not scored".to_string())))
                .collect();
            let _ = reply.send(outcome);
        }
    }
}

fn run_round(scorer: &mut Scorer, jobs: Vec<Job>, budget: usize, metrics: &Metrics) {
    let now = Instant::now();
    let mut jobs: Vec<Pending> = jobs
        .into_iter()
        .map(|j| {
            metrics.queue_wait(now.saturating_duration_since(j.enqueued));
            let mut p = Pending::new(j);
            p.drop_if_abandoned(now, metrics);
            p
        })
        .filter(|p| p.reply.is_some())
        .collect();
    if jobs.is_empty() {
        return;
    }
    metrics.rounds.fetch_add(1, Ordering::Relaxed);
    metrics
        .round_jobs
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);

    // Interactive work first, then by options; arrival order within each.
    let mut groups: Vec<Group> = Vec::new();
    for (ji, p) in jobs.iter_mut().enumerate() {
        p.reply_if_done();
        let k = key(&p.opts);
        let entries = (0..p.records.len()).map(|ri| (ji, ri));
        match groups
            .iter_mut()
            .find(|g| g.key == k && g.priority == p.priority)
        {
            Some(g) => g.entries.extend(entries),
            None => groups.push(Group {
                priority: p.priority,
                key: k,
                opts: p.opts.clone(),
                entries: entries.collect(),
            }),
        }
    }
    groups.sort_by_key(|g| g.priority);
    for Group { opts, entries, .. } in groups {
        scorer.set_options(opts);
        for chunk in chunks(&entries, &jobs, budget) {
            let now = Instant::now();
            for &(ji, _) in chunk {
                jobs[ji].drop_if_abandoned(now, metrics);
            }
            let live: Vec<(usize, usize)> = chunk
                .iter()
                .copied()
                .filter(|&(ji, _)| jobs[ji].reply.is_some())
                .collect();
            let batch: Vec<Record> = live
                .iter()
                .filter_map(|&(ji, ri)| jobs[ji].records[ri].take())
                .collect();
            if batch.is_empty() {
                continue;
            }
            let scored =
                catch_unwind(AssertUnwindSafe(|| scorer.score(&batch))).unwrap_or_else(|_| {
                    eprintln!("padv serve: internal error while scoring a batch (panic caught)");
                    (0..batch.len())
                        .map(|_| Err(Error::Backend("internal error while scoring".into())))
                        .collect()
                });
            for (&(ji, ri), r) in live.iter().zip(scored) {
                let p = &mut jobs[ji];
                p.results[ri] = Some(finish(scorer, r, metrics));
                p.left -= 1;
                p.reply_if_done();
            }
        }
    }
}

fn finish(scorer: &Scorer, r: Result<ScoredRecord>, metrics: &Metrics) -> Result<Scored, String> {
    let s = r.map_err(|e| e.to_string())?;
    let n_tokens = s.encoded.token_ids.len();
    metrics.records_scored.fetch_add(1, Ordering::Relaxed);
    metrics
        .tokens_scored
        .fetch_add(n_tokens as u64, Ordering::Relaxed);
    if let Ok(mut c) = metrics.cache.lock() {
        *c = scorer.cache_stats();
    }
    Ok(Scored {
        json: scorer.to_json(&s),
        n_tokens,
    })
}

/// Consecutive runs of `entries` of about `budget` estimated tokens (at least
/// one entry each).
fn chunks<'a>(
    entries: &'a [(usize, usize)],
    jobs: &[Pending],
    budget: usize,
) -> Vec<&'a [(usize, usize)]> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &(ji, ri)) in entries.iter().enumerate() {
        let t = jobs[ji].records[ri].as_ref().map_or(0, estimate_tokens);
        if tokens + t > budget && i > start {
            out.push(&entries[start..i]);
            start = i;
            tokens = 0;
        }
        tokens += t;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// A cheap guess of a record's token count, for scheduling only (the exact
/// count needs the tokenizer, which runs on the worker): about four bytes a
/// token plus a few template tokens per message.
pub fn estimate_tokens(r: &Record) -> usize {
    match &r.body {
        Body::Tokens { token_ids, .. } => token_ids.len(),
        Body::Text { text, .. } => text.len() / 4 + 1,
        Body::Chat(chat) => chat
            .messages
            .iter()
            .map(|m| {
                let calls: usize = m
                    .tool_calls
                    .iter()
                    .map(|c| c.name.len() + c.arguments.to_string().len())
                    .sum();
                (m.content.len() + calls) / 4 + 6
            })
            .sum(),
    }
}
