//! The `score`, `select`, `attribute`, `eval` and `serve` commands: argument
//! structs and their glue to [`padv::pipeline`], [`padv::apps`] and
//! [`padv::serve`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use padv::apps::{
    self, Aggregation, Method, ReadOptions, ReportOptions, ScoredSet, ScoredTrajectory,
};
use padv::backend::{ComputeDtype, Device};
use padv::model::merge::{DEFAULT_DENSITY, check_alpha, check_density};
use padv::model::{MergeMethod, MergeOptions};
use padv::pipeline::{ScoredRecord, Scorer, ScorerOptions};
use padv::score::aggregate::{StepAgg, TokenAgg};
use padv::tokenizer::TokenizerBundle;
use padv::trajectory::{Format, Record, RenderMode, read_records};

use crate::output::{Output, refuse_input_as, refuse_output};

/// `--input`, or the bundled demo trajectories (the embedded default:
/// [`padv::toyworld`]).
pub fn input_or_demo(input: &Option<PathBuf>) -> Result<PathBuf> {
    match input {
        Some(p) => Ok(p.clone()),
        None => Ok(padv::toyworld::dir()?.join("demo_trained.jsonl")),
    }
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Policy checkpoint: an HF directory, or a hub id ORG/NAME[@REV] found in the
    /// local Hugging Face cache (never downloaded). Default: the bundled toyworld policy.
    #[arg(long, requires = "reference")]
    pub policy: Option<PathBuf>,
    /// Reference checkpoint (a directory or a cached hub id). Default: the bundled toyworld reference.
    #[arg(long, requires = "policy")]
    pub reference: Option<PathBuf>,
    /// auto | cpu | cuda[:N]
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Input format (auto-detected by default): jsonl, messages, tau2, who-and-when, tokens, text.
    #[arg(long)]
    pub format: Option<Format>,
    /// template (default when the tokenizer has a chat template) | plain
    #[arg(long)]
    pub render: Option<RenderMode>,
    /// mean | sum | last | min | max (default: mean; sum on the bundled demo)
    #[arg(long)]
    pub token_agg: Option<TokenAgg>,
    /// mean | sum | last | min | max | bottom10
    #[arg(long, default_value = "mean")]
    pub step_agg: StepAgg,
    /// Scale of the advantage: finite, |β| ≤ 1e6 (negative values need no `=`).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse_beta)]
    pub beta: f64,
    /// Keep only the last N tokens of each record (spans adjusted, cut actions flagged).
    #[arg(long, value_parser = at_least_one)]
    pub max_length: Option<usize>,
    /// Tokens per forward batch.
    #[arg(long, default_value_t = 8192, value_parser = at_least_one)]
    pub batch_tokens: usize,
    /// Recompute shared prefixes instead of reusing their cached K/V.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Prefix-cache budget in MiB (default: a quarter of available memory, 64 MiB–16 GiB).
    #[arg(long)]
    pub kv_cache_mb: Option<usize>,
    /// f32 | bf16 | f16 | auto (alias --gpu-dtype). CUDA: the dtype weights,
    /// GEMM inputs and the KV cache are converted to at upload (auto: the
    /// checkpoint's; f32 gives the CPU's arithmetic on a bf16 checkpoint).
    /// CPU: auto = f32, the exact path; bf16 runs the weight GEMMs and the
    /// LM head on bf16-rounded inputs with f32 accumulation (vdpbf16ps with
    /// AVX512-BF16, the same numbers emulated elsewhere), ~2× the GEMM rate;
    /// f16 is refused.
    #[arg(long, alias = "gpu-dtype", default_value = "auto")]
    pub compute_dtype: ComputeDtype,
    /// Make warnings errors: a record whose chat-template render drops an
    /// action's tool calls becomes an error record.
    #[arg(long)]
    pub strict: bool,
    /// Score against a weight-space merge of reference and policy instead of
    /// the reference: π_α = θ_ref + α·τ, τ = θ_policy − θ_ref per tensor in
    /// f32, rounded to the checkpoint's dtype; no merged copy is made.
    /// linear: α·θ_policy + (1 − α)·θ_ref. ties: keep τ's entries with |τ| at
    /// least the tensor's k-th largest, k = max(1, ⌊density·numel⌋).
    /// dare_linear: keep each entry of τ with probability density (seeded
    /// by --merge-seed, the tensor's name and the entry's index), rescaled by
    /// 1/density. With one policy, dare_ties equals dare_linear (sign
    /// election is the identity) and emr reduces to linear (unified vector τ,
    /// rescale λ = 1), up to rounding.
    #[arg(long, requires = "alpha")]
    pub merge: Option<MergeMethod>,
    /// α of the merge in [0, 1] (0: the reference, 1: the policy); several,
    /// comma-separated, score every α in one run: the policy's log-probs
    /// once, each record written once per α with an `alpha` field.
    #[arg(long, requires = "merge", value_delimiter = ',', value_parser = parse_alpha)]
    pub alpha: Vec<f64>,
    /// Fraction of τ kept by ties / dare_*, in (0, 1] (default 0.2).
    #[arg(long, requires = "merge", value_parser = parse_density)]
    pub density: Option<f64>,
    /// Seed of the dare_* masks.
    #[arg(long, requires = "merge", default_value_t = 0)]
    pub merge_seed: u64,
}

impl ModelArgs {
    /// The merge's α values (empty without `--merge`).
    pub(crate) fn alphas(&self) -> &[f64] {
        if self.merge.is_some() {
            &self.alpha
        } else {
            &[]
        }
    }

    fn uses_default(&self) -> bool {
        self.policy.is_none()
    }
    pub(crate) fn pair(&self) -> Result<(PathBuf, PathBuf)> {
        match (&self.policy, &self.reference) {
            (Some(p), Some(r)) => Ok((p.clone(), r.clone())),
            _ => Ok(padv::toyworld::pair()?),
        }
    }
    /// Load the pair, warning on stderr when chat records will be rendered
    /// plain for want of a chat template.
    pub(crate) fn load(&self, with_tokens: bool) -> Result<Scorer> {
        let (policy, reference) = self.pair()?;
        let scorer = Scorer::load(&policy, &reference, self.options(with_tokens))?;
        if let Some(w) = scorer.render_fallback() {
            eprintln!("warning: {w}");
        }
        Ok(scorer)
    }

    pub(crate) fn options(&self, with_tokens: bool) -> ScorerOptions {
        let default_agg = if self.uses_default() {
            TokenAgg::Sum
        } else {
            TokenAgg::Mean
        };
        ScorerOptions {
            device: self.device,
            render: self.render,
            token_agg: self.token_agg.unwrap_or(default_agg),
            step_agg: self.step_agg,
            beta: self.beta,
            max_length: self.max_length,
            batch_tokens: self.batch_tokens,
            with_tokens,
            prefix_cache: !self.no_prefix_cache,
            kv_cache_mb: self.kv_cache_mb,
            compute_dtype: self.compute_dtype,
            strict: self.strict,
            merge: self
                .merge
                .zip(self.alpha.first())
                .map(|(method, &alpha)| MergeOptions {
                    method,
                    alpha,
                    density: self.density.unwrap_or(DEFAULT_DENSITY),
                    seed: self.merge_seed,
                }),
        }
    }
}

/// A number argument (the range is checked by the caller).
fn number(s: &str) -> std::result::Result<f64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))
}

/// `--beta`: the range the HTTP API accepts too.
fn parse_beta(s: &str) -> std::result::Result<f64, String> {
    number(s).and_then(padv::pipeline::check_beta)
}

/// `--alpha`: one value of the list.
fn parse_alpha(s: &str) -> std::result::Result<f64, String> {
    number(s).and_then(check_alpha)
}

/// `--density`.
fn parse_density(s: &str) -> std::result::Result<f64, String> {
    number(s).and_then(check_density)
}

/// A count that must be positive (`--batch-tokens`, `--queue`, …).
pub(crate) fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// A duration that must be longer than zero (`--session-ttl`, `--request-timeout`).
fn positive_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    match padv::serve::parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Stop at the first bad record.
    Fail,
    /// Write `{"id", "error"}` in its place and go on.
    Skip,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input file (JSONL records, τ²-bench JSON, Who&When file or directory).
    /// Default: the bundled toyworld demo trajectories.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Write JSON lines here (`-` for stdout). Without it a table is printed.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Add token-level arrays (every position scored) and the action mask.
    #[arg(long)]
    pub tokens: bool,
    #[arg(long, value_enum, default_value = "fail")]
    pub on_error: OnError,
}

#[derive(Args, Clone)]
pub struct AppArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Trajectories (scored first) or the scored JSONL of `padv score`.
    /// Default: the bundled toyworld demo.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Field naming each trajectory's best-of-N group.
    #[arg(long, default_value = "task_id")]
    pub group_by: String,
    /// progress_advantage | policy_logprob | reference_logprob | entropy | self_certainty | deepconf_tail | deepconf_bottom10
    #[arg(long, default_value = "progress_advantage")]
    pub method: Method,
    /// Write JSON lines here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// With `skip`, records that cannot be read or scored are left out of
    /// the metrics and counted as skipped.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_error: OnError,
}

#[derive(Args)]
pub struct SelectArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Also print each group's rank table.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Write the metrics as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The table for every token aggregation × step aggregation.
    #[arg(long)]
    pub sweep: bool,
}

pub(crate) fn progress(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} records  {msg}  eta {eta}")
            .expect("valid template"),
    );
    bar
}

/// Score records in slices (for the progress bar); one result per record
/// and α (`alphas` of a merge sweep; empty: one plain pass).
fn score_records(
    scorer: &mut Scorer,
    records: &[Record],
    alphas: &[f64],
) -> Result<Vec<Vec<padv::Result<ScoredRecord>>>> {
    let bar = progress(records.len());
    let start = Instant::now();
    let mut out: Vec<Vec<_>> = (0..alphas.len().max(1))
        .map(|_| Vec::with_capacity(records.len()))
        .collect();
    let mut tokens = 0usize;
    for part in records.chunks(64) {
        let scored = match alphas {
            [_, _, ..] => scorer.score_sweep(part, alphas)?,
            _ => vec![scorer.score(part)],
        };
        for (out, scored) in out.iter_mut().zip(scored) {
            for r in scored {
                if let Ok(s) = &r {
                    tokens += s.encoded.token_ids.len();
                }
                out.push(r);
            }
        }
        bar.inc(part.len() as u64);
        bar.set_message(format!(
            "{:.0} tokens/s",
            tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
        ));
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Trajectories for the apps: a scored JSONL is read as is; anything else is
/// scored first with the pair (token arrays kept when `with_tokens`). One
/// set per α of a merge (`None`: no merge, or scored input).
fn scored_sets(
    a: &AppArgs,
    with_tokens: bool,
    input: &Path,
) -> Result<Vec<(Option<f64>, ScoredSet)>> {
    let opts = ReadOptions {
        group_by: a.group_by.clone(),
        skip_invalid: a.on_error == OnError::Skip,
    };
    if is_scored_file(input) {
        if a.model.policy.is_some() {
            bail!(
                "{} already holds scores; --policy/--reference are not used with scored input",
                input.display()
            );
        }
        return Ok(split_by_alpha(apps::read_scored(input, &opts)?));
    }
    let mut scorer = a.model.load(with_tokens)?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    // A record that cannot be read or scored: the run's error, or skipped.
    let skip = |skipped: &mut Vec<_>, e: padv::Error, id: Option<String>| -> Result<()> {
        if a.on_error == OnError::Fail {
            return Err(e.into());
        }
        let error = e.to_string();
        let location = error.split(": ").next().unwrap_or_default().to_string();
        skipped.push(apps::SkippedRecord {
            location,
            id,
            error,
        });
        Ok(())
    };
    for r in read_records(input, a.model.format)? {
        match r {
            Ok(r) => records.push(r),
            Err(e) => {
                let id = e.record_id().map(str::to_string);
                skip(&mut skipped, e, id)?
            }
        }
    }
    let alphas = a.model.alphas();
    let mut sets = Vec::new();
    for (k, scored) in score_records(&mut scorer, &records, alphas)?
        .into_iter()
        .enumerate()
    {
        let mut trajectories = Vec::new();
        let mut skipped = skipped.clone();
        for (s, r) in scored.into_iter().zip(&records) {
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    skip(&mut skipped, e, Some(r.id.clone()))?;
                    continue;
                }
            };
            let mut t =
                ScoredTrajectory::new(s.record.id.clone(), s.steps.clone(), scorer.settings())
                    .with_input_record(scorer.to_json(&s), &opts)?;
            t.location = s.record.location.clone();
            if with_tokens {
                t = t.with_tokens(s.tokens.clone())?;
            }
            trajectories.push(t);
        }
        sets.push((
            alphas.get(k).copied(),
            ScoredSet {
                trajectories,
                skipped,
            },
        ));
    }
    Ok(sets)
}

/// A merge sweep's scored file (records with an `alpha` field) as one set
/// per α, in order of first appearance; error lines count in every set.
fn split_by_alpha(set: ScoredSet) -> Vec<(Option<f64>, ScoredSet)> {
    let alpha = |t: &ScoredTrajectory| t.record.as_ref().and_then(|r| r["alpha"].as_f64());
    if set.trajectories.iter().all(|t| alpha(t).is_none()) {
        return vec![(None, set)];
    }
    let mut sets: Vec<(Option<f64>, ScoredSet)> = Vec::new();
    for t in set.trajectories {
        let a = alpha(&t);
        match sets.iter_mut().find(|(b, _)| *b == a) {
            Some((_, s)) => s.trajectories.push(t),
            None => sets.push((
                a,
                ScoredSet {
                    trajectories: vec![t],
                    skipped: set.skipped.clone(),
                },
            )),
        }
    }
    sets
}

/// Whether a JSONL file is `padv score` output, judged by its first line
/// that is a JSON object (a damaged first line does not decide; directories
/// and unreadable paths are not).
fn is_scored_file(path: &Path) -> bool {
    use std::io::BufRead;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    std::io::BufReader::new(file)
        .split(b'\n')
        .map_while(std::result::Result::ok)
        .take(1000)
        .find_map(|line| match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Object(o)) => Some(
                o.contains_key("steps") || (o.contains_key("error") && !o.contains_key("messages")),
            ),
            _ => None,
        })
        .unwrap_or(false)
}

/// Tells of the error records and unreadable lines `set` left out (they have
/// no scores to select or attribute from); a sweep says it once.
fn note_skipped(set: &ScoredSet, alpha: Option<f64>, first_alpha: bool) {
    if set.skipped.is_empty() || !first_alpha {
        return;
    }
    let s = &set.skipped[0];
    eprintln!(
        "skipped {} (no scores){}: {}",
        padv::apps::eval::error_records(set.skipped.len()),
        if alpha.is_some() { " at every α" } else { "" },
        if s.error.starts_with(&s.location) {
            s.error.clone()
        } else {
            format!("{}: {}", s.location, s.error)
        }
    );
}

/// ` at α = A` for a merge sweep's set, empty otherwise.
fn at_alpha(alpha: Option<f64>) -> String {
    alpha.map_or(String::new(), |a| format!(" at α = {a}"))
}

pub fn select(a: SelectArgs) -> Result<()> {
    let input = input_or_demo(&a.app.input)?;
    refuse_output(a.app.output.as_deref(), &input)?;
    let sets = scored_sets(&a.app, false, &input)?;
    let mut w = Output::create(a.app.output.as_deref(), &[&input])?;
    // A sweep's chosen records carry their `alpha` field.
    for (k, (alpha, set)) in sets.into_iter().enumerate() {
        note_skipped(&set, alpha, k == 0);
        let sel = apps::select(
            &set.trajectories,
            a.app.method,
            Aggregation::stored(a.app.model.step_agg),
        )?;
        if !sel.left_out.is_empty() {
            eprintln!(
                "left out {} of {} trajectories without a valid {} score{}",
                sel.left_out.len(),
                set.trajectories.len(),
                a.app.method,
                at_alpha(alpha)
            );
        }
        for r in sel.chosen_records(&set.trajectories) {
            writeln!(w, "{r}")?;
        }
        if a.explain {
            eprintln!("{}{}", at_alpha(alpha), sel.explain_markdown());
        }
    }
    w.flush()?;
    Ok(())
}

fn with_alpha(mut v: Value, alpha: Option<f64>) -> Value {
    if let (Some(alpha), Some(o)) = (alpha, v.as_object_mut()) {
        o.insert("alpha".into(), alpha.into());
    }
    v
}

pub fn attribute(a: AppArgs) -> Result<()> {
    let input = input_or_demo(&a.input)?;
    refuse_output(a.output.as_deref(), &input)?;
    let sets = scored_sets(&a, false, &input)?;
    let mut w = Output::create(a.output.as_deref(), &[&input])?;
    for (k, (alpha, set)) in sets.into_iter().enumerate() {
        note_skipped(&set, alpha, k == 0);
        // One line per input record: those without scores as their errors.
        for v in apps::attribution_lines(&set, a.method)? {
            writeln!(w, "{}", with_alpha(v, alpha))?;
        }
    }
    w.flush()?;
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let inputs: Vec<PathBuf> = match &a.app.input {
        Some(p) => vec![p.clone()],
        None => {
            let toy = padv::toyworld::dir()?;
            vec![toy.join("demo_ref.jsonl"), toy.join("demo_trained.jsonl")]
        }
    };
    if let Some(o) = &a.app.output {
        bail!(
            "--output {}: eval prints its tables on stdout (redirect it) and writes files with \
             --json and --report",
            o.display()
        );
    }
    // No file option may name an input: each is written once its input is read.
    let sources: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    for (flag, path) in [("--json", &a.json), ("--report", &a.report)] {
        if let Some(p) = path {
            refuse_input_as(flag, p, &sources)?;
        }
    }
    let mut json_out = serde_json::Map::new();
    for input in &inputs {
        for (alpha, set) in scored_sets(&a.app, a.sweep, input)? {
            eval_set(&a, input, alpha, inputs.len() > 1, &set, &mut json_out)?;
        }
    }
    if let Some(path) = &a.json {
        let v = if json_out.len() == 1 {
            json_out.into_iter().next().expect("one").1
        } else {
            Value::Object(json_out)
        };
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One input's (and one α's) tables, JSON entry and report.
fn eval_set(
    a: &EvalArgs,
    input: &Path,
    alpha: Option<f64>,
    several_inputs: bool,
    set: &ScoredSet,
    json_out: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let mut key = input.display().to_string();
    if let Some(alpha) = alpha {
        key = format!("{key} alpha={alpha}");
        println!(
            "\n## {}α = {alpha}\n",
            if several_inputs {
                format!("{} ", input.display())
            } else {
                String::new()
            }
        );
    } else if several_inputs {
        println!("\n## {}\n", input.display());
    }
    if set.trajectories.is_empty() {
        bail!(
            "{}{}: no scored trajectories to evaluate ({} skipped)",
            input.display(),
            at_alpha(alpha),
            apps::eval::error_records(set.skipped.len())
        );
    }
    let report = apps::evaluate(set, None)?;
    let value = if a.sweep {
        let reports = apps::sweep(set)?;
        println!("{}", apps::sweep_markdown(&reports));
        apps::sweep_json(&reports)
    } else {
        println!("{}", report.to_markdown());
        report.to_json()
    };
    json_out.insert(key, value);
    if let Some(path) = &a.report {
        let mut path = if several_inputs {
            suffixed(path, input)
        } else {
            path.clone()
        };
        if let Some(alpha) = alpha {
            path = alpha_suffixed(&path, alpha);
        }
        refuse_input_as("--report", &path, &[input])?;
        let opts = ReportOptions {
            title: format!("padv evaluation — {}{}", input.display(), at_alpha(alpha)),
            ..ReportOptions::default()
        };
        std::fs::write(&path, apps::render_html(set, &report, &opts)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `report.html` at α = 0.3 → `report-a0.3.html`.
fn alpha_suffixed(path: &Path, alpha: f64) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report");
    path.with_file_name(format!("{stem}-a{alpha}.html"))
}

/// `report.html` + `demo_ref.jsonl` → `report-demo_ref.html`.
fn suffixed(path: &Path, input: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report");
    let tag = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    path.with_file_name(format!("{stem}-{tag}.html"))
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Close a session unused for this long (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = positive_duration)]
    pub session_ttl: std::time::Duration,
    /// Open sessions at most (past it, opening one answers 429).
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one)]
    pub max_sessions: usize,
    /// Requests waiting for the scoring worker at most (past it, 429).
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub queue: usize,
    /// Larger request bodies answer 413.
    #[arg(long, default_value_t = 16 << 20, value_parser = at_least_one)]
    pub max_request_bytes: usize,
    /// A request received in full and not answered within this (queue wait
    /// and scoring) answers 504 and its work is dropped.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: std::time::Duration,
    /// A request's head, and then its body, must each arrive within this;
    /// else the connection is closed (a late body answers 408 first).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub read_timeout: std::time::Duration,
    /// Connections served at once (past it, 503 and closed).
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub max_connections: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "PADV_API_KEY", hide_env_values = true, value_parser = api_key)]
    pub api_key: Option<String>,
}

/// A non-empty key without whitespace or control characters.
fn api_key(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the API key must be non-empty, without spaces or control characters".into());
    }
    Ok(s.to_string())
}

/// `padv serve`: the HTTP service in the foreground until SIGINT/SIGTERM.
pub fn serve(a: ServeArgs) -> Result<()> {
    if a.model.alphas().len() > 1 {
        bail!("padv serve scores against one merged reference: give one --alpha");
    }
    let (policy, reference) = a.model.pair()?;
    let mut config = padv::serve::ServeConfig::new(policy, reference);
    config.options = a.model.options(false);
    config.addr = a.addr;
    config.session_ttl = a.session_ttl;
    config.max_sessions = a.max_sessions;
    config.queue_capacity = a.queue;
    config.max_request_bytes = a.max_request_bytes;
    config.request_timeout = a.request_timeout;
    config.read_timeout = a.read_timeout;
    config.max_connections = a.max_connections;
    config.api_key = a.api_key;
    eprintln!(
        "padv serve: loading {} and {}",
        config.policy.display(),
        config.reference.display()
    );
    if let Ok(tok) = padv::hub::resolve_model(&config.policy).and_then(TokenizerBundle::load)
        && let Some(w) = padv::pipeline::render_fallback(&tok, config.options.render)
    {
        eprintln!("padv serve: warning: {w}");
    }
    if config.api_key.is_none() && !config.addr.ip().is_loopback() {
        eprintln!(
            "padv serve: warning: listening on {} without --api-key: anyone who can reach \
             it can score, read and change every session (see docs/serve.md)",
            config.addr
        );
    }
    padv::serve::run(config, |addr| {
        eprintln!("padv serve: listening on http://{addr}");
    })?;
    Ok(())
}
