//! `padv bench --device cuda`: the pair's figures on one GPU, each set
//! against a ceiling measured in the same run (measured, not asserted):
//!
//! * device copy bandwidth (1 GiB device-to-device, bytes read + written)
//!   and the fused scoring kernel's GB/s over 1024 rows of both models'
//!   logits (read once) as a share of it;
//! * the cuBLAS GEMM rate in the model's dtype (8192³, f32 out) and the
//!   pair's forward TFLOP/s as a share of it (only each sequence's last
//!   token scored, so the LM head is negligible);
//! * end-to-end pair scoring of every token, tokens/s, by the cuBLAS LM
//!   head + fused scorer and (bf16/f16 pairs) by the folded LM head, side by
//!   side;
//! * for a pair with DeltaNet layers, the same with the delta rule in
//!   chunks against token by token ([`DeltaRulePath`]);
//! * where one more such run's time goes (the forward's GEMMs, attention,
//!   the LM heads with the scorer, the DeltaNet layers, the rest), the
//!   device synchronised around each part.
//!
//! Every timed region ends with a stream synchronisation; the best of
//! `repeats` runs is reported after one warm-up run. The criterion twin is
//! `benches/cuda_kernels.rs`.

use std::sync::Arc;
use std::time::Instant;

use super::device::{CudaResultExt, DevTensor, Gpu};
use super::{CudaPair, DeltaRulePath, LmHeadPath, PairScorer, SeqRequest};
use crate::Result;
use crate::backend::profile::Profiled;
use crate::bench::forward_flops;
use crate::model::Model;

/// Tokens per timed batch: `max(1, BATCH_TOKENS / T)` sequences of `T`.
const BATCH_TOKENS: usize = 8192;

/// One sequence length.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RooflineRow {
    pub seqs: usize,
    pub tokens: usize,
    pub forward_s: f64,
    pub forward_tflops: f64,
    pub score_s: f64,
    pub score_tokens_per_s: f64,
    /// The same with the LM head folded into the scorer (`None`: the pair
    /// cannot fold, e.g. f32 weights).
    pub score_fold_s: Option<f64>,
    /// The same with the delta rule in chunks, and where that run's time
    /// goes (`None`: no DeltaNet layers).
    pub score_chunked: Option<(f64, Profiled)>,
    /// One more score-every-token run with the device synchronised around
    /// each part ([`crate::backend::profile`]).
    pub profiled: Profiled,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RooflineReport {
    pub model: String,
    pub device: String,
    pub copy_gbps: f64,
    pub fused_gbps: f64,
    pub fused_rows: usize,
    pub vocab: usize,
    pub gemm_dtype: String,
    pub gemm_tflops: f64,
    pub rows: Vec<RooflineRow>,
}

/// Best wall time of `repeats` runs of `f` (after one warm-up); `f` must end
/// synchronised with the device.
fn best_of_synced(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// As [`best_of_synced`] for device work on `gpu`'s stream, synchronising
/// after each run.
fn best_of(gpu: &Gpu, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    best_of_synced(repeats, || {
        f()?;
        gpu.synchronize()
    })
}

/// `seqs` sequences of `len` pseudo-random tokens; `last_only` scores only
/// each sequence's last token (the criterion benches use it too).
pub fn batch(vocab: usize, seqs: usize, len: usize, last_only: bool) -> Vec<SeqRequest> {
    let mut x = 0x2545F4914F6CDD1Du64;
    (0..seqs)
        .map(|_| SeqRequest {
            token_ids: (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % vocab as u64) as u32
                })
                .collect(),
            score_mask: last_only.then(|| (0..len).map(|t| t + 1 == len).collect()),
        })
        .collect()
}

/// Measure the ceilings, then the pair at each length in `lengths`.
pub fn run(
    ordinal: usize,
    policy: Arc<Model>,
    reference: Arc<Model>,
    lengths: &[usize],
    repeats: usize,
) -> Result<RooflineReport> {
    let model = policy.describe();
    let dtype = policy.dtype();
    let vocab = policy.config.vocab_size;
    let mut pair = CudaPair::new(ordinal, policy.clone(), reference.clone())?;
    pair.set_delta_rule(DeltaRulePath::Recurrent);
    let hybrid = [&policy, &reference].iter().any(|m| m.config.is_hybrid());
    let gpu = pair.gpu();
    let device = pair.describe();

    // Copy bandwidth: 1 GiB each way.
    let n = 1usize << 28;
    let src = gpu.poisoned_f32(n)?;
    let mut dst = gpu.alloc_f32(n)?;
    let copy_s = best_of(gpu, repeats, || {
        gpu.stream.memcpy_dtod(&src, &mut dst).ctx("memcpy")
    })?;
    let copy_gbps = (2 * 4 * n) as f64 / copy_s / 1e9;
    drop((src, dst));

    // Fused scoring over 1024 rows of this vocabulary, both models.
    let rows = 1024usize;
    let ld = vocab.next_multiple_of(4);
    let mut lp = DevTensor::alloc(gpu, crate::model::DType::F32, rows * ld)?;
    let mut lr = DevTensor::alloc(gpu, crate::model::DType::F32, rows * ld)?;
    gpu.fill_uniform(&mut lp.all_mut(), 1, -20.0, 20.0)?;
    gpu.fill_uniform(&mut lr.all_mut(), 2, -20.0, 20.0)?;
    let targets: Vec<u32> = (0..rows).map(|i| (i * 97 % vocab) as u32).collect();
    let targets = gpu.upload(&targets)?;
    let mut out = gpu.alloc_f32(4 * rows)?;
    let (vp, vr) = (lp.f32_view()?, lr.f32_view()?);
    let fused_s = best_of(gpu, repeats, || {
        gpu.fused_logprob(
            &vp,
            &vr,
            &targets.as_view(),
            &mut out.as_view_mut(),
            vocab,
            ld,
            None,
        )
    })?;
    let fused_gbps = (2 * 4 * rows * ld) as f64 / fused_s / 1e9;
    drop((lp, lr, out));

    // GEMM rate in the model's dtype.
    let m = 8192usize;
    let mut a = DevTensor::alloc(gpu, dtype, m * m)?;
    let mut b = DevTensor::alloc(gpu, dtype, m * m)?;
    gpu.fill_uniform(&mut a.all_mut(), 3, -1.0, 1.0)?;
    gpu.fill_uniform(&mut b.all_mut(), 4, -1.0, 1.0)?;
    let mut c = gpu.alloc_f32(m * m)?;
    let gemm_s = best_of(gpu, repeats, || {
        gpu.matmul_wt(&a.all(), &b.all(), &mut c.as_view_mut(), m, m, m, m)
    })?;
    let gemm_tflops = 2.0 * (m as f64).powi(3) / gemm_s / 1e12;
    drop((a, b, c));

    let mut out_rows = Vec::new();
    for &len in lengths {
        let seqs = (BATCH_TOKENS / len.max(1)).max(1);
        let last = batch(vocab, seqs, len, true);
        let all = batch(vocab, seqs, len, false);
        // `score` downloads its results, so each call ends synchronised.
        pair.set_lm_head(LmHeadPath::Gemm);
        let forward_s = best_of_synced(repeats, || pair.score(&last).map(|_| ()))?;
        let score_s = best_of_synced(repeats, || pair.score(&all).map(|_| ()))?;
        pair.set_lm_head(LmHeadPath::Fold);
        let (p, r) = pair.models();
        let score_fold_s = match LmHeadPath::Fold.folds(pair.gpu(), &[p, r]) {
            true => Some(best_of_synced(repeats, || pair.score(&all).map(|_| ()))?),
            false => None,
        };
        pair.set_lm_head(LmHeadPath::Gemm);
        let (r, profiled) = Profiled::run(|| pair.score(&all));
        r?;
        let score_chunked = if hybrid {
            pair.set_delta_rule(DeltaRulePath::Chunked);
            let t = best_of_synced(repeats, || pair.score(&all).map(|_| ()))?;
            let (r, prof) = Profiled::run(|| pair.score(&all));
            r?;
            pair.set_delta_rule(DeltaRulePath::Recurrent);
            Some((t, prof))
        } else {
            None
        };
        let flops = seqs as f64
            * (forward_flops(&policy.config, len, 0) + forward_flops(&reference.config, len, 0));
        out_rows.push(RooflineRow {
            seqs,
            tokens: len,
            forward_s,
            forward_tflops: flops / forward_s / 1e12,
            score_s,
            score_tokens_per_s: (seqs * len) as f64 / score_s,
            score_fold_s,
            score_chunked,
            profiled,
        });
    }
    Ok(RooflineReport {
        model,
        device,
        copy_gbps,
        fused_gbps,
        fused_rows: rows,
        vocab,
        gemm_dtype: dtype.name().to_string(),
        gemm_tflops,
        rows: out_rows,
    })
}

impl RooflineReport {
    /// Human-readable roofline table.
    pub fn table(&self) -> String {
        let mut s = format!("model: {}\ndevice: {}\n\n", self.model, self.device);
        s += "| what | measured | share of its ceiling |\n|---|---:|---:|\n";
        s += &format!(
            "| device copy (D2D, read + write) | {:.0} GB/s | ceiling |\n",
            self.copy_gbps
        );
        s += &format!(
            "| fused scoring, {} rows × vocab {} × 2 models | {:.0} GB/s | {:.0}% of copy |\n",
            self.fused_rows,
            self.vocab,
            self.fused_gbps,
            100.0 * self.fused_gbps / self.copy_gbps
        );
        s += &format!(
            "| cuBLAS {} GEMM 8192³ (f32 out) | {:.0} TFLOP/s | ceiling |\n",
            self.gemm_dtype, self.gemm_tflops
        );
        for r in &self.rows {
            s += &format!(
                "| forward, pair, {}×{} tokens (last scored) | {:.1} TFLOP/s | {:.0}% of GEMM |\n",
                r.seqs,
                r.tokens,
                r.forward_tflops,
                100.0 * r.forward_tflops / self.gemm_tflops
            );
            s += &format!(
                "| score every token, pair, {}×{} | {:.0} tokens/s | {:.1} ms/batch |\n",
                r.seqs,
                r.tokens,
                r.score_tokens_per_s,
                1e3 * r.score_s
            );
            // Where a profiled run's time went.
            let parts = |what: &str, p: &Profiled| {
                format!(
                    "| {what}, {}×{} | {} | synchronised at each part |\n",
                    r.seqs,
                    r.tokens,
                    p.summary()
                )
            };
            s += &parts("where a profiled run's time goes", &r.profiled);
            // Another way to score every token, against the row above.
            let other = |how: &str, t: f64, against: &str| {
                format!(
                    "| score every token, {how}, {}×{} | {:.0} tokens/s | {:.2}× {against} |\n",
                    r.seqs,
                    r.tokens,
                    (r.seqs * r.tokens) as f64 / t,
                    r.score_s / t
                )
            };
            if let Some((t, prof)) = &r.score_chunked {
                s += &other("delta rule in chunks", *t, "token by token");
                s += &parts("where its time goes", prof);
            }
            if let Some(t) = r.score_fold_s {
                s += &other("folded LM head", t, "the cuBLAS LM head");
            }
        }
        s
    }
}
