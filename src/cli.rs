//! Command-line interface: clap definitions and their translation into
//! library calls. `main.rs` only parses and dispatches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use padv::backend::{ComputeDtype, Device};
use padv::bench::{self, BenchOptions, synth};
use padv::model::DType;

use crate::commands::{self, AppArgs, EvalArgs, ScoreArgs, SelectArgs, ServeArgs};

#[derive(Parser)]
#[command(
    name = "padv",
    version,
    about = "Step-level progress advantage log π_θ − log π_ref for LLM-agent trajectories"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Score trajectories (or texts / token ids) with a policy/reference pair.
    /// With no model or input arguments, scores the bundled toyworld demo.
    Score(ScoreArgs),
    /// Best-of-N: keep the highest-scoring rollout of each group.
    Select(SelectArgs),
    /// Predict each trajectory's decisive error step (three predictors).
    Attribute(AppArgs),
    /// Uncertainty, best-of-N and attribution metrics for every method.
    /// With no arguments, runs on the bundled toyworld demo.
    Eval(EvalArgs),
    /// Write a random-weight checkpoint of a real model's shape (for benchmarks).
    Synth(SynthArgs),
    /// Measure GEMM peak, forward GFLOP/s, pair-scoring tokens/s and peak RSS (CPU); with
    /// `--device cuda` a roofline table (copy and fused-kernel GB/s, GEMM and forward
    /// TFLOP/s, tokens/s); with `--prefix-cache` what the KV-prefix cache saves.
    Bench(BenchArgs),
    /// HTTP service: score trajectories and agent steps as they happen, with
    /// both models kept warm. With no model arguments, serves the toyworld pair.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// A real model's shape.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        synth::SHAPES.iter().map(|s| s.name)))]
    pub shape: String,
    #[arg(long)]
    pub out: PathBuf,
    /// bf16 | f16 | f32
    #[arg(long, default_value = "bf16")]
    pub dtype: DType,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Synthesize (once, under the temp dir) a random pair of this shape.
    #[arg(long, default_value = "qwen2.5-0.5b", conflicts_with_all = ["policy", "reference"])]
    pub shape: String,
    #[arg(long, requires = "reference")]
    pub policy: Option<PathBuf>,
    #[arg(long, requires = "policy")]
    pub reference: Option<PathBuf>,
    /// Sequence lengths to time.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,4096", value_parser = crate::commands::at_least_one)]
    pub tokens: Vec<usize>,
    /// The synthesized pair's weight dtype (not for `--policy`/`--reference`).
    #[arg(long, default_value = "bf16", conflicts_with_all = ["policy", "reference"])]
    pub dtype: DType,
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Timed repetitions per figure (best is reported).
    #[arg(long, default_value_t = 2, value_parser = crate::commands::at_least_one)]
    pub repeats: usize,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// CPU compute modes to time side by side (f32, bf16; f16 is refused on
    /// the CPU).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub compute_dtype: Vec<ComputeDtype>,
    /// Measure the KV-prefix cache instead: agent trajectories scored step by
    /// step and rollouts sharing a task prompt, cache off vs on (its own
    /// lengths and compute mode: `--tokens` and `--compute-dtype` do not apply).
    #[arg(long, conflicts_with_all = ["tokens", "compute_dtype"])]
    pub prefix_cache: bool,
}

/// Print a bench table; also write the report as JSON when asked.
fn print_report(table: &str, report: &impl serde::Serialize, json: Option<&Path>) -> Result<()> {
    println!("{table}");
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Score(a) => crate::score_run::score(a),
        Command::Select(a) => commands::select(a),
        Command::Attribute(a) => commands::attribute(a),
        Command::Eval(a) => commands::eval(a),
        Command::Serve(a) => commands::serve(a),
        Command::Synth(a) => {
            let shape = synth::shape(&a.shape)?;
            synth::write(&shape, &a.out, a.dtype, a.seed)?;
            eprintln!(
                "wrote {} ({} parameters, {}) to {}",
                shape.name,
                shape.num_params()?,
                a.dtype.name(),
                a.out.display()
            );
            Ok(())
        }
        Command::Bench(a) => {
            let (policy, reference) = match (a.policy, a.reference) {
                (Some(p), Some(r)) => {
                    (padv::hub::resolve_model(&p)?, padv::hub::resolve_model(&r)?)
                }
                _ => bench::ensure_synth_pair(&a.shape, a.dtype)?,
            };
            if a.prefix_cache {
                let mut o = padv::bench::prefix::PrefixBenchOptions::new(policy, reference);
                if padv::backend::cuda_ordinal(a.device).is_some() {
                    o = o.scaled(4);
                }
                (o.device, o.repeats) = (a.device, a.repeats);
                let report = padv::bench::prefix::run(&o)?;
                print_report(&report.table(), &report, a.json.as_deref())?;
                return Ok(());
            }
            #[cfg(feature = "cuda")]
            if let Some(ordinal) = padv::backend::cuda_ordinal(a.device) {
                let p = std::sync::Arc::new(padv::model::Model::load(&policy)?);
                let r = std::sync::Arc::new(padv::model::Model::load(&reference)?);
                let report =
                    padv::backend::cuda::roofline::run(ordinal, p, r, &a.tokens, a.repeats)?;
                print_report(&report.table(), &report, a.json.as_deref())?;
                return Ok(());
            }
            let report = bench::run(&BenchOptions {
                policy,
                reference,
                lengths: a.tokens,
                device: a.device,
                repeats: a.repeats,
                modes: a
                    .compute_dtype
                    .iter()
                    .map(|c| c.cpu())
                    .collect::<padv::Result<_>>()?,
            })?;
            print_report(&report.table(), &report, a.json.as_deref())?;
            Ok(())
        }
    }
}
