//! `padv bench`: measured, not asserted. Reports the machine's GEMM peak,
//! forward GFLOP/s against it, pair-scoring tokens/s, peak RSS, and the fused
//! scorer against a naive log-softmax + gather over the same logits, and on
//! the CPU where a pair-scoring run's time goes (GEMMs, attention, LM head,
//! the rest: `backend::profile`).

pub mod prefix;
pub mod roof;
pub mod synth;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::backend::cpu::forward::{Packed, forward_hidden};
use crate::backend::cpu::gemm_bf16::Gemm;
use crate::backend::cpu::rope::Ropes;
use crate::backend::profile;
use crate::backend::{ComputeDtype, Device, SeqRequest, open_pair_with};
use crate::model::weights::{Data, Tensor};
use crate::model::{Config, DType, Model};
use crate::score::fused::{naive_row_stats, row_logp, row_stats};
use crate::{Error, Result};

/// Options of one bench run.
pub struct BenchOptions {
    pub policy: PathBuf,
    pub reference: PathBuf,
    pub lengths: Vec<usize>,
    pub device: Device,
    pub repeats: usize,
    /// CPU compute modes timed side by side (each its own pair scorer).
    pub modes: Vec<Gemm>,
}

/// Best-of-`n` wall time in seconds.
fn best_of<F: FnMut()>(n: usize, mut f: F) -> f64 {
    (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// GEMM rate of this machine with all threads (GFLOP/s): padv's own kernel
/// in `gemm`'s arithmetic on an MLP-shaped product (512 tokens × 4864 ×
/// 896, bf16 weights).
pub fn gemm_peak_gflops(gemm: Gemm) -> f64 {
    let (m, n, k) = (512, 4864, 896);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<half::bf16> = (0..n * k)
        .map(|i| half::bf16::from_f32((i % 7) as f32 * 0.01))
        .collect();
    let mut c = vec![0.0f32; m * n];
    let shape = [n, k];
    let w = Tensor {
        name: "peak",
        shape: &shape,
        data: Data::BF16(&b),
    };
    let secs = best_of(8, || gemm.matmul_wt(&a, m, &w, &mut c, n, false));
    2.0 * (m * n * k) as f64 / secs / 1e9
}

/// Peak resident set size of this process (bytes), from /proc.
pub fn peak_rss_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reset the peak-RSS counter (Linux ≥ 4.0); false where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// FLOPs of one forward over a single sequence of `t` tokens (linear layers
/// plus causal attention scores and values).
pub fn forward_flops(c: &Config, t: usize, lm_head_rows: usize) -> f64 {
    let linear = c.flops_per_token(false) * t as f64;
    let head = 2.0 * (c.hidden_size * c.vocab_size) as f64 * lm_head_rows as f64;
    linear + attention_flops(c, t) + head
}

/// FLOPs of causal attention (`Q·Kᵀ` and `P·V`) over `t` tokens.
pub fn attention_flops(c: &Config, t: usize) -> f64 {
    // Σ over queries i of the keys each layer shows it (window respected).
    c.layers
        .iter()
        .filter_map(|l| l.attn())
        .map(|a| {
            let w = a.window.unwrap_or(t).min(t);
            let keys = (w * (w + 1) / 2 + (t - w) * w) as f64;
            4.0 * keys * a.q_dim() as f64
        })
        .sum()
}

/// One row of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub tokens: usize,
    /// The CPU compute mode (`f32`, `bf16`).
    pub mode: &'static str,
    pub forward_s: f64,
    pub forward_gflops: f64,
    pub pair_s: f64,
    pub pair_tokens_per_s: f64,
    pub pair_gflops: f64,
    pub peak_rss_mb: Option<f64>,
    /// One profiled pair-scoring run, split by part (CPU only).
    pub parts: Option<Parts>,
}

/// Where a pair-scoring run's wall time goes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parts {
    pub total_s: f64,
    /// The weight GEMMs (projections and MLP), the attention tiles, the
    /// folded LM heads, the gated-DeltaNet layers' convolution and chunked
    /// delta rule (hybrid models), and everything else (norms, RoPE,
    /// embeddings, …).
    pub gemm_s: f64,
    pub attention_s: f64,
    pub lm_head_s: f64,
    pub delta_rule_s: f64,
    pub rest_s: f64,
    pub gemm_gflops: f64,
    pub attention_gflops: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    /// padv's f32 GEMM on an MLP-shaped product, all threads.
    pub gemm_peak_gflops: f64,
    /// The same product in bf16 compute (when timed).
    pub gemm_bf16_gflops: Option<f64>,
    /// Instruction roofs on all threads ([`roof`]): f32 FMA, `vdpbf16ps`.
    pub roof_f32_gflops: Option<f64>,
    pub roof_bf16_gflops: Option<f64>,
    pub mapped_weights_mb: f64,
    pub rows: Vec<BenchRow>,
    pub fused_rows_per_s: f64,
    pub naive_rows_per_s: f64,
    pub vocab: usize,
}

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let policy = Arc::new(Model::load(&opts.policy)?);
    let reference = Arc::new(Model::load(&opts.reference)?);
    // Nothing longer than the model's context is ever scored (and a huge
    // length would only exhaust memory).
    let context = policy.config.max_position_embeddings;
    if let Some(&t) = opts.lengths.iter().find(|&&t| t > context) {
        return Err(Error::input(
            "--tokens",
            format!(
                "{t} tokens is past the model's context of {context} (max_position_embeddings)"
            ),
        ));
    }
    let mapped = (policy.weights.mapped_bytes() + reference.weights.mapped_bytes()) as f64 / 1e6;
    let (roof_f32, roof_bf16) = (roof::f32_fma_roof_gflops(), roof::bf16_dot_roof_gflops());
    let peak = gemm_peak_gflops(Gemm::F32);
    let peak_bf16 = opts
        .modes
        .contains(&Gemm::Bf16)
        .then(|| gemm_peak_gflops(Gemm::Bf16));
    let mut scorers = Vec::new();
    for &gemm in &opts.modes {
        let compute = match gemm {
            Gemm::F32 => ComputeDtype::Auto,
            Gemm::Bf16 => ComputeDtype::Bf16,
        };
        let s = open_pair_with(opts.device, policy.clone(), reference.clone(), compute)?;
        scorers.push((gemm, s));
    }
    let vocab = policy.config.vocab_size;
    let rope = Ropes::new(
        &policy.config,
        opts.lengths.iter().copied().max().unwrap_or(1),
    );
    let mut rows = Vec::new();
    for &t in &opts.lengths {
        let tokens = random_tokens(t, vocab, t as u64);
        let seqs = [Packed { start: 0, len: t }];
        for (gemm, scorer) in scorers.iter_mut() {
            let gemm = *gemm;
            // Warm the page cache / mappings once.
            forward_hidden(
                gemm,
                &policy,
                &rope,
                &tokens[..t.min(64)],
                &[Packed {
                    start: 0,
                    len: t.min(64),
                }],
            )?;
            let mut err = None;
            let forward_s = best_of(opts.repeats, || {
                if let Err(e) = forward_hidden(gemm, &policy, &rope, &tokens, &seqs) {
                    err = Some(e);
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            // The pair too: the reference's weights and the LM heads are
            // first touched here, not in the first timed run (which, with
            // one repeat, paid ~0.7 s of page faults on the 0.5B shape).
            let warm = [SeqRequest {
                token_ids: tokens[..t.min(64)].to_vec(),
                score_mask: None,
            }];
            scorer.score(&warm)?;
            reset_peak_rss();
            let req = [SeqRequest {
                token_ids: tokens.clone(),
                score_mask: None,
            }];
            // The CPU backend's breakdown is taken over the timed runs
            // themselves (the timers cost two clock reads per timed call).
            let profiled = scorer.describe().starts_with("cpu");
            profile::enable(profiled);
            profile::take();
            let mut timed_s = 0.0;
            let pair_s = best_of(opts.repeats, || {
                let t0 = Instant::now();
                if let Err(e) = scorer.score(&req) {
                    err = Some(e);
                }
                timed_s += t0.elapsed().as_secs_f64();
            });
            let b = profile::take();
            profile::enable(false);
            if let Some(e) = err {
                return Err(e);
            }
            let rss = peak_rss_bytes().map(|b| b as f64 / 1e6);
            let (pc, rc) = (&policy.config, &reference.config);
            let parts = profiled.then(|| {
                // Means per run.
                let n = opts.repeats.max(1) as f64;
                let total_s = timed_s / n;
                let (gemm_s, attention_s) = (b.gemm_s / n, b.attention_s / n);
                let (lm_head_s, delta_rule_s) = (b.lm_head_s / n, b.delta_rule_s / n);
                let linear = (pc.flops_per_token(false) + rc.flops_per_token(false)) * t as f64;
                let attn = attention_flops(pc, t) + attention_flops(rc, t);
                Parts {
                    total_s,
                    gemm_s,
                    attention_s,
                    lm_head_s,
                    delta_rule_s,
                    rest_s: total_s - gemm_s - attention_s - lm_head_s - delta_rule_s,
                    gemm_gflops: linear / gemm_s / 1e9,
                    attention_gflops: attn / attention_s / 1e9,
                }
            });
            let f1 = forward_flops(pc, t, 0);
            let pair_flops = forward_flops(pc, t, t - 1) + forward_flops(rc, t, t - 1);
            rows.push(BenchRow {
                tokens: t,
                mode: gemm.name(),
                forward_s,
                forward_gflops: f1 / forward_s / 1e9,
                pair_s,
                pair_tokens_per_s: t as f64 / pair_s,
                pair_gflops: pair_flops / pair_s / 1e9,
                peak_rss_mb: rss,
                parts,
            });
        }
    }
    // Fused scorer vs materialised log-softmax + gather on the same logits.
    let n_rows = 32;
    let mut rng = SmallRng::seed_from_u64(7);
    let logits: Vec<f32> = (0..n_rows * vocab)
        .map(|_| rng.random_range(-8.0..8.0))
        .collect();
    let fused_s = best_of(3, || {
        for r in 0..n_rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            std::hint::black_box((row_stats(row, r), row_logp(row, r)));
        }
    });
    let naive_s = best_of(3, || {
        for r in 0..n_rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            std::hint::black_box((naive_row_stats(row, r), naive_row_stats(row, r)));
        }
    });
    Ok(BenchReport {
        model: policy.describe(),
        device: scorers
            .iter()
            .map(|(_, s)| s.describe())
            .collect::<Vec<_>>()
            .join(" | "),
        threads: rayon::current_num_threads(),
        gemm_peak_gflops: peak,
        gemm_bf16_gflops: peak_bf16,
        roof_f32_gflops: roof_f32,
        roof_bf16_gflops: roof_bf16,
        mapped_weights_mb: mapped,
        rows,
        fused_rows_per_s: n_rows as f64 / fused_s,
        naive_rows_per_s: n_rows as f64 / naive_s,
        vocab,
    })
}

impl BenchReport {
    /// Human-readable table.
    pub fn table(&self) -> String {
        let gf = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
        let mut s = format!(
            "model: {}\ndevice: {} | mapped weights (pair): {:.0} MB\n\
             roofs ({} threads, 12-accumulator loops): f32 vfmadd {} GFLOP/s, vdpbf16ps {} GFLOP/s | \
             GEMM rate (512×4864×896, bf16 weights): f32 {:.1}, bf16 {} GFLOP/s\n\n",
            self.model,
            self.device,
            self.mapped_weights_mb,
            self.threads,
            gf(self.roof_f32_gflops),
            gf(self.roof_bf16_gflops),
            self.gemm_peak_gflops,
            gf(self.gemm_bf16_gflops),
        );
        s += "| T | mode | forward s | forward GFLOP/s | pair score s | pair tokens/s | pair GFLOP/s | % of roof | × f32 | peak RSS MB |\n";
        s += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in &self.rows {
            // The mode's own instruction roof (bf16 without the instruction
            // runs emulated f32 arithmetic: the f32 roof).
            let roof = match r.mode {
                "bf16" => self.roof_bf16_gflops.or(self.roof_f32_gflops),
                _ => self.roof_f32_gflops,
            };
            let pct = roof.map_or("n/a".into(), |f| {
                format!("{:.0}%", 100.0 * r.pair_gflops / f)
            });
            let base = self
                .rows
                .iter()
                .find(|b| b.tokens == r.tokens && b.mode == "f32");
            let ratio = base.map_or("n/a".into(), |b| {
                format!("{:.2}", r.pair_tokens_per_s / b.pair_tokens_per_s)
            });
            s += &format!(
                "| {} | {} | {:.3} | {:.1} | {:.3} | {:.1} | {:.1} | {pct} | {ratio} | {} |\n",
                r.tokens,
                r.mode,
                r.forward_s,
                r.forward_gflops,
                r.pair_s,
                r.pair_tokens_per_s,
                r.pair_gflops,
                r.peak_rss_mb.map_or("n/a".into(), |m| format!("{m:.0}"))
            );
        }
        if self.rows.iter().any(|r| r.parts.is_some()) {
            s += "\nforward breakdown (the timed pair-scoring runs, mean per run, wall time):\n\n";
            s += "| T | mode | pair s | GEMMs s | GEMM GFLOP/s | attention s | attention GFLOP/s | LM head s | DeltaNet conv + rule s | rest s |\n";
            s += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
            for (t, mode, p) in self
                .rows
                .iter()
                .filter_map(|r| Some((r.tokens, r.mode, r.parts.as_ref()?)))
            {
                let pct = |x: f64| format!("{x:.3} ({:.0}%)", 100.0 * x / p.total_s);
                s += &format!(
                    "| {t} | {mode} | {:.3} | {} | {:.1} | {} | {:.1} | {} | {} | {} |\n",
                    p.total_s,
                    pct(p.gemm_s),
                    p.gemm_gflops,
                    pct(p.attention_s),
                    p.attention_gflops,
                    pct(p.lm_head_s),
                    pct(p.delta_rule_s),
                    pct(p.rest_s)
                );
            }
        }
        s += &format!(
            "\nfused scorer (policy stats + reference logp, vocab {}): {:.0} rows/s | naive log-softmax + gather: {:.0} rows/s | ratio {:.1}×\n",
            self.vocab,
            self.fused_rows_per_s,
            self.naive_rows_per_s,
            self.fused_rows_per_s / self.naive_rows_per_s
        );
        s
    }
}

/// Where `padv bench --shape` keeps its synthesized pair.
pub fn synth_cache_dir(shape: &str, dtype: DType) -> PathBuf {
    std::env::temp_dir().join(format!("padv-synth-{shape}-{}", dtype.name()))
}

/// Synthesize (once) a policy/reference pair of `shape` and return their dirs.
pub fn ensure_synth_pair(shape: &str, dtype: DType) -> Result<(PathBuf, PathBuf)> {
    let s = synth::shape(shape)?;
    let root = synth_cache_dir(shape, dtype);
    let dirs = (root.join("policy"), root.join("reference"));
    for (dir, seed) in [(&dirs.0, 1), (&dirs.1, 2)] {
        if !Path::new(&dir.join("tokenizer.json")).exists() {
            eprintln!(
                "synthesizing {shape} ({}) into {}",
                dtype.name(),
                dir.display()
            );
            synth::write(&s, dir, dtype, seed)?;
        }
    }
    Ok(dirs)
}
