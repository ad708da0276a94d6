//! The CUDA backend (feature `cuda`): the policy/reference pair resident on
//! one GPU, scored with the kernels in `kernels/*.cu` and cuBLAS GEMMs.
//!
//! Data path per batch, mirroring `cpu::CpuPair::score`:
//! pack the sequences ([`forward::PagedBatch`]: positions, KV-pool slots,
//! attention tiles) → each model's forward over all packed tokens, returning
//! final-normed hidden states only at the rows whose next token is scored
//! (`score_mask`) → per chunk of those rows, both LM heads (f32 logits) and
//! the fused log-prob kernel → 16 bytes per scored token back to the host.
//!
//! Layout: [`device`] (context, stream, kernel images, typed buffers),
//! [`kernels`] (launchers with shape checks, cuBLAS GEMM), [`weights`]
//! (upload / random init), [`forward`] (the decoder), [`roofline`]
//! (`padv bench --device cuda`). Without the feature,
//! `cuda_disabled.rs` stands in with the same names.

pub mod device;
pub mod forward;
pub mod kernels;
pub mod roofline;
pub mod weights;

use std::sync::Arc;

pub use cudarc;

pub use self::device::{DevTensor, DevView, DevViewMut, Gpu, device_count, probe};
use self::device::{backend_err, sub, sub_mut};
use self::forward::{DeviceBatch, PagedBatch, forward_rows};
use self::weights::{DeviceModel, check_free};
use super::plan::{self, Row, WavePlan, nan_scores, uncached};
use super::{PairScorer, SeqRequest};
use crate::model::weights::DType;
use crate::model::{Config, Model};
use crate::score::TokenScores;
use crate::{Error, Result};

/// Floats of logits per model held at once while scoring (512 MiB).
const LOGIT_BUDGET: usize = 128 << 20;

/// A policy/reference pair on one CUDA device.
pub struct CudaPair {
    gpu: Gpu,
    ordinal: usize,
    policy: DeviceModel,
    reference: DeviceModel,
}

impl CudaPair {
    /// Upload both checkpoints to device `ordinal`, matrices in their stored
    /// dtype (bf16/f16 checkpoints run their GEMMs on tensor cores).
    pub fn new(ordinal: usize, policy: Arc<Model>, reference: Arc<Model>) -> Result<CudaPair> {
        Self::upload(ordinal, &policy, &reference, None)
    }

    /// As [`CudaPair::new`], with every matrix converted to `compute` at
    /// upload. `DType::F32` gives the CPU backend's arithmetic for bf16/f16
    /// checkpoints (f32 GEMM inputs instead of one bf16 rounding per layer
    /// input), at twice the memory and f32 GEMM speed.
    pub fn with_compute_dtype(
        ordinal: usize,
        policy: Arc<Model>,
        reference: Arc<Model>,
        compute: DType,
    ) -> Result<CudaPair> {
        Self::upload(ordinal, &policy, &reference, Some(compute))
    }

    fn upload(
        ordinal: usize,
        policy: &Model,
        reference: &Model,
        compute: Option<DType>,
    ) -> Result<CudaPair> {
        crate::model::check_pair(policy, reference)?;
        let gpu = Gpu::new(ordinal)?;
        let widen = |m: &Model| match compute {
            Some(d) => m.weights.mapped_bytes() / m.dtype().size() * d.size(),
            None => m.weights.mapped_bytes(),
        };
        check_free(
            &gpu,
            widen(policy) + widen(reference),
            "uploading the policy and reference weights",
        )?;
        let p = DeviceModel::upload(&gpu, policy, compute)?;
        let r = DeviceModel::upload(&gpu, reference, compute)?;
        gpu.synchronize()?;
        Ok(CudaPair {
            gpu,
            ordinal,
            policy: p,
            reference: r,
        })
    }

    /// A pair with random weights of the given shapes, generated on the
    /// device (benchmarks; no checkpoint needed).
    pub fn random(
        ordinal: usize,
        policy: &Config,
        reference: &Config,
        dtype: DType,
        seed: u64,
    ) -> Result<CudaPair> {
        if policy.vocab_size != reference.vocab_size {
            return Err(Error::Incompatible(format!(
                "vocab_size differs: {} vs {}",
                policy.vocab_size, reference.vocab_size
            )));
        }
        let gpu = Gpu::new(ordinal)?;
        let p = DeviceModel::random(&gpu, policy, dtype, seed)?;
        let r = DeviceModel::random(&gpu, reference, dtype, seed ^ 0x5EED)?;
        Ok(CudaPair {
            gpu,
            ordinal,
            policy: p,
            reference: r,
        })
    }

    /// The device, for benches that time kernels on the same context.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// (policy, reference) on the device.
    pub fn models(&self) -> (&DeviceModel, &DeviceModel) {
        (&self.policy, &self.reference)
    }
}

impl PairScorer for CudaPair {
    fn describe(&self) -> String {
        // The compute dtype is part of the description, so a caller (and a
        // test through `Scorer`) can tell a bf16 run from an f32 one.
        format!(
            "cuda:{} {} (compute {}/{})",
            self.ordinal,
            self.gpu.describe(),
            self.policy.dtype.name(),
            self.reference.dtype.name()
        )
    }

    /// A merged reference at another α: formed host-side tensor by tensor
    /// from the mapped files (no file is re-read) and uploaded in the
    /// current reference's compute dtype.
    fn set_reference(&mut self, reference: Arc<Model>) -> Result<()> {
        let dtype = self.reference.dtype;
        self.reference = DeviceModel::upload(&self.gpu, &reference, Some(dtype))?;
        self.gpu.synchronize()
    }

    fn score(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        let gpu = &self.gpu;
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| backend_err(format!("cuda: bind context: {e}")))?;
        let (p, r) = (&self.policy.config, &self.reference.config);
        plan::check_batch(batch, [p, r])?;
        // One wave, nothing cached: every wanted position t is predicted by
        // packed row t − 1 of its sequence.
        let plan = WavePlan::new(batch, &uncached(batch), 1);
        let lens: Vec<usize> = plan.seqs.iter().map(|s| s.len).collect();
        let layout = PagedBatch::new(&lens);
        let rows: Vec<i32> = plan
            .wanted
            .iter()
            .map(|w| match w.row {
                Row::New(row) => row as i32,
                Row::Boundary(_) => unreachable!("nothing is cached"),
            })
            .collect();
        let targets = plan.targets(batch);
        let mut out = nan_scores(batch);
        if plan.wanted.is_empty() {
            return Ok(out);
        }

        let dev_batch = DeviceBatch::upload(gpu, &plan.tokens, layout)?;
        let dev_rows = gpu.upload(&rows)?;
        let dev_targets = gpu.upload(&targets)?;
        let hp = forward_rows(gpu, &self.policy, &dev_batch, &dev_rows)?;
        let hr = forward_rows(gpu, &self.reference, &dev_batch, &dev_rows)?;
        drop(dev_batch);

        let n = plan.wanted.len();
        let vocab = self.policy.config.vocab_size;
        let ld = vocab.next_multiple_of(4);
        let (h_p, h_r) = (
            self.policy.config.hidden_size,
            self.reference.config.hidden_size,
        );
        let chunk = (LOGIT_BUDGET / ld).clamp(16, 4096).min(n);
        let mut lp = gpu.alloc_f32(chunk * ld)?;
        let mut lr = gpu.alloc_f32(chunk * ld)?;
        let mut stats = gpu.alloc_f32(4 * n)?;
        for c0 in (0..n).step_by(chunk) {
            let c1 = (c0 + chunk).min(n);
            let c = c1 - c0;
            gpu.matmul_wt(
                &hp.view(c0 * h_p, c1 * h_p)?,
                &self.policy.lm_head().all(),
                &mut sub_mut(&mut lp, 0, c * ld)?,
                c,
                vocab,
                h_p,
                ld,
            )?;
            gpu.matmul_wt(
                &hr.view(c0 * h_r, c1 * h_r)?,
                &self.reference.lm_head().all(),
                &mut sub_mut(&mut lr, 0, c * ld)?,
                c,
                vocab,
                h_r,
                ld,
            )?;
            gpu.fused_logprob(
                &sub(&lp, 0, c * ld)?,
                &sub(&lr, 0, c * ld)?,
                &sub(&dev_targets, c0, c1)?,
                &mut sub_mut(&mut stats, 4 * c0, 4 * c1)?,
                vocab,
                ld,
            )?;
        }
        let host = gpu.download(&stats.as_view())?;
        let stats = host.chunks_exact(4).map(|s| [s[0], s[1], s[2], s[3]]);
        plan.scatter(&mut out, stats, |_, _, _| {});
        Ok(out)
    }
}
