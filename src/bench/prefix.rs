//! `padv bench --prefix-cache`: what the prefix cache saves on agent
//! workloads, cache on against cache off on the same pair, back to back.
//!
//! Trajectories are synthesized token ids (a task prompt, then observation
//! and action steps; action tokens are the scored positions), scored the way
//! a service sees them:
//!
//! * **step by step**: one trajectory, one call per step with the whole
//!   conversation so far;
//! * **rollouts, one batch**: N rollouts of one task (a shared prompt) scored
//!   together;
//! * **rollouts, step by step**: N agents in parallel, one call per step with
//!   every rollout's conversation so far. Its cache-off side is not run (it is
//!   long); its computed tokens are exact regardless, since without the
//!   cache every requested token is computed.
//!
//! Computed-token counts are exact. Wall times are measured call by call,
//! the cache-off call then the cache-on call, so both see the same machine
//! load; each call's time is its best over `repeats` (a fresh cache each).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::Result;
use crate::backend::profile::Profiled;
use crate::backend::{Device, PairScorer, SeqRequest, open_pair};
use crate::kv::{CacheStats, KvOptions};
use crate::model::Model;
use crate::score::TokenScores;

/// Sizes of the synthesized workloads.
#[derive(Debug, Clone)]
pub struct PrefixBenchOptions {
    pub policy: PathBuf,
    pub reference: PathBuf,
    pub device: Device,
    pub repeats: usize,
    pub kv_cache_mb: Option<usize>,
    /// Step-by-step trajectory: prompt tokens and steps.
    pub prompt: usize,
    pub steps: usize,
    /// Tokens of each observation and each action.
    pub observation: usize,
    pub action: usize,
    /// Rollouts sharing one task prompt of `rollout_prompt` tokens, each
    /// `rollout_steps` steps long.
    pub rollouts: usize,
    pub rollout_prompt: usize,
    pub rollout_steps: usize,
}

impl PrefixBenchOptions {
    /// The default workloads (sized for a small CPU): a 10-step trajectory
    /// after a 512-token prompt (system prompt and tools), steps of a
    /// 64-token observation and a 32-token action; 8 rollouts of 3 such steps
    /// after a 1,000-token task prompt.
    pub fn new(policy: PathBuf, reference: PathBuf) -> PrefixBenchOptions {
        PrefixBenchOptions {
            policy,
            reference,
            device: Device::Auto,
            repeats: 1,
            kv_cache_mb: None,
            prompt: 512,
            steps: 10,
            observation: 64,
            action: 32,
            rollouts: 8,
            rollout_prompt: 1000,
            rollout_steps: 3,
        }
    }

    /// The longest request the workloads make.
    fn longest(&self) -> usize {
        let step = self.observation + self.action;
        (self.prompt + self.steps * step).max(self.rollout_prompt + self.rollout_steps * step)
    }

    /// These workloads with every token count scaled down (each ≥ 1) so
    /// that no request is longer than `max_positions`, and the factor;
    /// unchanged (`None`) when they fit.
    pub fn fitted(&self, max_positions: usize) -> (PrefixBenchOptions, Option<f64>) {
        let longest = self.longest();
        if longest <= max_positions {
            return (self.clone(), None);
        }
        let f = max_positions as f64 / longest as f64;
        let mut o = self.clone();
        for n in [
            &mut o.prompt,
            &mut o.observation,
            &mut o.action,
            &mut o.rollout_prompt,
        ] {
            *n = ((*n as f64 * f) as usize).max(1);
        }
        (o, Some(f))
    }

    /// Every token count times `k` (a GPU's default: `k` = 4, so each call
    /// is more than launch overhead).
    pub fn scaled(mut self, k: usize) -> PrefixBenchOptions {
        for n in [
            &mut self.prompt,
            &mut self.observation,
            &mut self.action,
            &mut self.rollout_prompt,
        ] {
            *n *= k;
        }
        self
    }
}

/// One workload, cache off against cache on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioRow {
    pub name: String,
    pub calls: usize,
    /// Tokens in all requests (= computed without the cache).
    pub requested_tokens: u64,
    pub computed_on: u64,
    pub token_ratio: f64,
    /// `None` where the cache-off side is not run.
    pub wall_off_s: Option<f64>,
    pub wall_on_s: f64,
    pub wall_ratio: Option<f64>,
    pub hit_rate: f64,
    pub evictions: u64,
    /// Largest |Δ| of any score between cache off and on (`None`: not run).
    pub max_abs_diff: Option<f64>,
    /// For the step-by-step trajectory: one more pass of its calls per
    /// side with the part timers on (`backend::profile`; on the GPU the
    /// device is synchronised around each part), (off, on).
    pub profiled: Option<(Profiled, Profiled)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PrefixBenchReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub block_size: usize,
    pub budget_mb: f64,
    /// The factor every token count was scaled by to fit the model's
    /// positions (`None`: as asked).
    pub fitted: Option<f64>,
    pub rows: Vec<ScenarioRow>,
}

/// A trajectory's tokens and action spans.
struct Trajectory {
    tokens: Vec<u32>,
    /// End of each step (after its action).
    step_ends: Vec<usize>,
    actions: Vec<(usize, usize)>,
}

fn trajectory(
    rng: &mut SmallRng,
    vocab: u32,
    prompt: &[u32],
    o: &PrefixBenchOptions,
    steps: usize,
) -> Trajectory {
    let mut tokens = prompt.to_vec();
    let (mut step_ends, mut actions) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        tokens.extend((0..o.observation).map(|_| rng.random_range(0..vocab)));
        let a = tokens.len();
        tokens.extend((0..o.action).map(|_| rng.random_range(0..vocab)));
        actions.push((a, tokens.len()));
        step_ends.push(tokens.len());
    }
    Trajectory {
        tokens,
        step_ends,
        actions,
    }
}

impl Trajectory {
    /// The request of the conversation through step `k` (1-based), actions scored.
    fn through(&self, k: usize) -> SeqRequest {
        let end = self.step_ends[k - 1];
        let mut mask = vec![false; end];
        for &(a, b) in &self.actions[..k] {
            mask[a..b].fill(true);
        }
        SeqRequest {
            token_ids: self.tokens[..end].to_vec(),
            score_mask: Some(mask),
        }
    }
}

/// Score one call; wall seconds and the scores.
fn timed(pair: &mut dyn PairScorer, call: &[SeqRequest]) -> Result<(f64, Vec<TokenScores>)> {
    let t = Instant::now();
    let scores = pair.score(call)?;
    Ok((t.elapsed().as_secs_f64(), scores))
}

fn max_diff(a: &[TokenScores], b: &[TokenScores]) -> f64 {
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        for (u, v) in [
            (&x.logp_policy, &y.logp_policy),
            (&x.logp_reference, &y.logp_reference),
            (&x.entropy_policy, &y.entropy_policy),
            (&x.self_certainty, &y.self_certainty),
        ] {
            for (p, q) in u.iter().zip(v) {
                let d = if p.is_nan() && q.is_nan() {
                    0.0
                } else {
                    (p - q).abs() as f64
                };
                worst = worst.max(if d.is_nan() { f64::INFINITY } else { d });
            }
        }
    }
    worst
}

pub fn run(o: &PrefixBenchOptions) -> Result<PrefixBenchReport> {
    let policy = Arc::new(Model::load(&o.policy)?);
    let reference = Arc::new(Model::load(&o.reference)?);
    let positions = policy
        .config
        .max_position_embeddings
        .min(reference.config.max_position_embeddings);
    let (fitted, scale) = o.fitted(positions);
    if fitted.longest() > positions {
        return Err(crate::Error::Backend(format!(
            "prefix-cache bench: {} steps cannot fit the model's {positions} positions",
            o.steps.max(o.rollout_steps)
        )));
    }
    let o = &fitted;
    let kv = KvOptions::with_budget_mb(o.kv_cache_mb);
    let open = |cache: bool| -> Result<Box<dyn PairScorer>> {
        let mut p = open_pair(o.device, policy.clone(), reference.clone())?;
        p.set_prefix_cache(cache.then_some(kv))?;
        if cache && p.cache_stats().is_none() {
            // A "cache on" side that silently runs without one would report 1×.
            return Err(crate::Error::Backend(format!(
                "{} has no prefix cache yet; run the prefix-cache bench with --device cpu",
                p.describe()
            )));
        }
        Ok(p)
    };
    let vocab = policy.config.vocab_size as u32;
    let mut rng = SmallRng::seed_from_u64(11);

    let prompt: Vec<u32> = (0..o.prompt).map(|_| rng.random_range(0..vocab)).collect();
    let single = trajectory(&mut rng, vocab, &prompt, o, o.steps);
    let task: Vec<u32> = (0..o.rollout_prompt)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let rollouts: Vec<Trajectory> = (0..o.rollouts)
        .map(|_| trajectory(&mut rng, vocab, &task, o, o.rollout_steps))
        .collect();

    let scenarios: Vec<(String, Vec<Vec<SeqRequest>>, bool)> = vec![
        (
            format!(
                "1 trajectory, {}-token prompt, {} steps of {} + {} tokens, step by step",
                o.prompt, o.steps, o.observation, o.action
            ),
            (1..=o.steps).map(|k| vec![single.through(k)]).collect(),
            true,
        ),
        (
            format!(
                "{} rollouts × {} steps, {}-token prompt, one batch",
                o.rollouts, o.rollout_steps, o.rollout_prompt
            ),
            vec![
                rollouts
                    .iter()
                    .map(|r| r.through(o.rollout_steps))
                    .collect(),
            ],
            true,
        ),
        (
            format!(
                "{} rollouts × {} steps, {}-token prompt, step by step",
                o.rollouts, o.rollout_steps, o.rollout_prompt
            ),
            (1..=o.rollout_steps)
                .map(|k| rollouts.iter().map(|r| r.through(k)).collect())
                .collect(),
            false,
        ),
    ];

    let mut rows = Vec::new();
    for (k, (name, calls, with_off)) in scenarios.into_iter().enumerate() {
        eprintln!("prefix-cache bench: {name}");
        let requested: u64 = calls
            .iter()
            .flatten()
            .map(|r| r.token_ids.len() as u64)
            .sum();
        // Call by call, off then on, so both sides see the same machine
        // load; per call the best of the repeats (each with a fresh cache).
        let mut best_off = vec![f64::INFINITY; calls.len()];
        let mut best_on = vec![f64::INFINITY; calls.len()];
        let (mut on_stats, mut diff) = (CacheStats::default(), None);
        let mut off = open(false)?;
        for _ in 0..o.repeats.max(1) {
            let mut on = open(true)?;
            let mut worst: Option<f64> = None;
            for (i, call) in calls.iter().enumerate() {
                if with_off {
                    let (s, a) = timed(off.as_mut(), call)?;
                    best_off[i] = best_off[i].min(s);
                    let (s, b) = timed(on.as_mut(), call)?;
                    best_on[i] = best_on[i].min(s);
                    worst = Some(worst.unwrap_or(0.0).max(max_diff(&a, &b)));
                } else {
                    let (s, _) = timed(on.as_mut(), call)?;
                    best_on[i] = best_on[i].min(s);
                }
            }
            on_stats = on.cache_stats().unwrap_or_default();
            diff = worst;
        }
        // Where a step's time goes, cache off and on (a fresh cache).
        let profiled = if k == 0 {
            let side = |pair: &mut dyn PairScorer| {
                let (r, p) =
                    Profiled::run(|| calls.iter().try_for_each(|c| pair.score(c).map(|_| ())));
                r.map(|()| p)
            };
            let off_p = side(off.as_mut())?;
            let on_p = side(open(true)?.as_mut())?;
            Some((off_p, on_p))
        } else {
            None
        };
        let (wall_off, wall_on) = (best_off.iter().sum::<f64>(), best_on.iter().sum::<f64>());
        let wall_off = with_off.then_some(wall_off);
        rows.push(ScenarioRow {
            name,
            calls: calls.len(),
            requested_tokens: requested,
            computed_on: on_stats.computed_tokens,
            token_ratio: requested as f64 / on_stats.computed_tokens.max(1) as f64,
            wall_off_s: wall_off,
            wall_on_s: wall_on,
            wall_ratio: wall_off.map(|w| w / wall_on),
            hit_rate: on_stats.hit_rate(),
            evictions: on_stats.evictions,
            max_abs_diff: diff,
            profiled,
        });
    }
    let probe = open(true)?;
    let stats = probe.cache_stats().unwrap_or_default();
    Ok(PrefixBenchReport {
        model: policy.describe(),
        device: probe.describe(),
        threads: rayon::current_num_threads(),
        block_size: stats.block_size,
        // The budget the backend took (the GPU caps it by free memory).
        budget_mb: stats.budget_bytes as f64 / (1 << 20) as f64,
        fitted: scale,
        rows,
    })
}

impl PrefixBenchReport {
    /// Human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "model: {}\ndevice: {} | prefix cache: {}-token blocks, budget {:.0} MiB\n",
            self.model, self.device, self.block_size, self.budget_mb
        );
        if let Some(f) = self.fitted {
            s += &format!("workloads: every token count × {f:.2}, to fit the model's positions\n");
        }
        s += "\n";
        s += "| workload | calls | tokens requested (= computed, cache off) | computed, cache on | token ratio | hit rate | wall off s | wall on s | wall ratio | max abs diff |\n";
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("not run".into(), f);
        for r in &self.rows {
            s += &format!(
                "| {} | {} | {} | {} | {:.2}× | {:.1}% | {} | {:.2} | {} | {} |\n",
                r.name,
                r.calls,
                r.requested_tokens,
                r.computed_on,
                r.token_ratio,
                100.0 * r.hit_rate,
                opt(r.wall_off_s, &|w| format!("{w:.2}")),
                r.wall_on_s,
                opt(r.wall_ratio, &|w| format!("{w:.2}×")),
                opt(r.max_abs_diff, &|d| format!("{d:.1e}")),
            );
        }
        for r in &self.rows {
            if let Some((off, on)) = &r.profiled {
                s += &format!(
                    "\nwhere the time goes, {} (one profiled pass):\n- cache off: {}\n- cache on: {}\n",
                    r.name,
                    off.summary(),
                    on.summary()
                );
            }
        }
        s
    }
}
