//! The CUDA backend (feature `cuda`): the policy/reference pair resident on
//! one GPU, scored with the kernels in `kernels/*.cu` and cuBLAS GEMMs.
//!
//! Data path per batch, mirroring `cpu::CpuPair::score`:
//! pack the sequences ([`forward::PagedBatch`]: positions, KV-pool slots,
//! attention tiles) → each model's forward over all packed tokens, returning
//! final-normed hidden states only at the rows whose next token is scored
//! (`score_mask`) → both LM heads and the scores ([`lm_head`]: cuBLAS f32
//! logits per chunk of rows and the fused log-prob kernel, or the folded
//! kernel with no logits in memory) → 16 bytes per scored token back to the
//! host.
//!
//! Layout: [`device`] (context, stream, kernel images, typed buffers),
//! [`deltanet`] (the gated-DeltaNet steps' launchers), [`delta_chunk`]
//! (the delta rule in chunks, and which form runs),
//! [`kernels`] (launchers with shape checks, cuBLAS GEMM), [`attention`]
//! (the attention launcher), [`lm_head`]
//! (the two LM-head paths), [`weights`]
//! (upload / random init), [`forward`] (the decoder), [`roofline`]
//! (`padv bench --device cuda`), [`wgmma`] (Hopper's warpgroup products
//! checked on the device). Without the feature,
//! `cuda_disabled.rs` stands in with the same names.

pub mod attention;
pub mod delta_chunk;
pub mod deltanet;
pub mod device;
pub mod forward;
pub mod kernels;
pub mod kv;
pub mod lm_head;
pub mod ple;
pub mod roofline;
pub mod weights;
pub mod wgmma;

use std::sync::Arc;

pub use cudarc;

pub use self::attention::AttnKernel;
pub use self::delta_chunk::DeltaRulePath;
use self::device::backend_err;
pub use self::device::{DevTensor, DevView, DevViewMut, Gpu, device_count, probe};
pub use self::forward::ForwardKernels;
use self::forward::{DeviceBatch, PagedBatch, forward_rows};
use self::kernels::KV_BLOCK;
use self::kv::{DeviceCache, DeviceKv, RowCopies, WaveCopies};
pub use self::lm_head::LmHeadPath;
use self::lm_head::lm_head_stats;
use self::weights::{DeviceModel, check_free};
use super::plan::{self, Row, WavePlan, count_uncached, in_waves, nan_scores, uncached};
use super::{PairScorer, SeqRequest};
use crate::backend::profile::Part;
use crate::kv::{Admitted, CacheStats, KvOptions};
use crate::model::weights::DType;
use crate::model::{Config, Model};
use crate::score::TokenScores;
use crate::{Error, Result};

/// A policy/reference pair on one CUDA device.
pub struct CudaPair {
    gpu: Gpu,
    ordinal: usize,
    policy: DeviceModel,
    reference: DeviceModel,
    /// Identity of the pair for the prefix cache's keys.
    fingerprint: u64,
    cache: Option<DeviceCache>,
    /// The cache's options, to start it afresh when the reference changes.
    kv_opts: Option<KvOptions>,
    /// Token counters (the cache adds its gauges).
    counters: CacheStats,
    /// How the LM heads and scores are computed (`PADV_CUDA_LM_HEAD`).
    lm_head: LmHeadPath,
    /// The delta rule's form and the attention kernel
    /// (`PADV_CUDA_DELTA_RULE`, `PADV_CUDA_ATTENTION`).
    kernels: ForwardKernels,
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
        CudaPair::assemble(
            gpu,
            ordinal,
            p,
            r,
            crate::kv::cache::fingerprint(policy, reference),
        )
    }

    fn assemble(
        gpu: Gpu,
        ordinal: usize,
        policy: DeviceModel,
        reference: DeviceModel,
        fingerprint: u64,
    ) -> Result<CudaPair> {
        Ok(CudaPair {
            gpu,
            ordinal,
            policy,
            reference,
            fingerprint,
            cache: None,
            kv_opts: None,
            counters: CacheStats::default(),
            lm_head: LmHeadPath::from_env()?,
            kernels: ForwardKernels {
                rule: DeltaRulePath::from_env()?,
                attention: AttnKernel::from_env()?,
            },
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
        CudaPair::assemble(gpu, ordinal, p, r, seed)
    }

    /// The device, for benches that time kernels on the same context.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// (policy, reference) on the device.
    pub fn models(&self) -> (&DeviceModel, &DeviceModel) {
        (&self.policy, &self.reference)
    }

    /// Before a batch: the context bound to this thread, the batch checked
    /// against both models; its scores, all NaN.
    fn begin(&self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(|e| backend_err(format!("cuda: bind context: {e}")))?;
        plan::check_batch(batch, [&self.policy.config, &self.reference.config])?;
        Ok(nan_scores(batch))
    }

    /// How the LM heads and scores are computed from now on.
    pub fn set_lm_head(&mut self, path: LmHeadPath) {
        self.lm_head = path;
    }

    /// The LM-head path asked for (see [`LmHeadPath::folds`] for what runs).
    pub fn lm_head(&self) -> LmHeadPath {
        self.lm_head
    }

    /// Which form of the delta rule DeltaNet layers run from now on.
    pub fn set_delta_rule(&mut self, path: DeltaRulePath) {
        self.kernels.rule = path;
    }

    /// The delta rule's form asked for.
    pub fn delta_rule(&self) -> DeltaRulePath {
        self.kernels.rule
    }

    /// Which attention kernel runs from now on.
    pub fn set_attention(&mut self, kernel: AttnKernel) {
        self.kernels.attention = kernel;
    }

    /// The LM-head, delta-rule and attention choices, for a [`Pass`].
    fn paths(&self) -> (LmHeadPath, ForwardKernels) {
        (self.lm_head, self.kernels)
    }

    /// The prefix cache, when on.
    pub fn cache(&self) -> Option<&DeviceCache> {
        self.cache.as_ref()
    }

    /// Turn the device prefix cache on (`Some`) or off. Its arenas are
    /// allocated whole now: the budget is capped at half the device memory
    /// free at this point (the forward's activations need the rest). Blocks
    /// are [`KV_BLOCK`] tokens (the pool layout's), or for a hybrid pair the
    /// next multiple of the delta rule's 64-token chunk, as on the CPU
    /// ([`crate::kv::cache::block_size_for`]).
    fn set_cache(&mut self, opts: Option<KvOptions>) -> Result<()> {
        self.kv_opts = opts;
        self.cache = None;
        let Some(o) = opts else { return Ok(()) };
        if o.block_size != KV_BLOCK {
            return Err(Error::Backend(format!(
                "cuda: the device prefix cache uses blocks of {KV_BLOCK} tokens (the paged \
                 pool's), not {}",
                o.block_size
            )));
        }
        let (gpu, p, r) = (&self.gpu, &self.policy, &self.reference);
        let bs = crate::kv::cache::block_size_for(&p.config, &r.config, KV_BLOCK);
        let budget = o.budget_bytes.min(gpu.free_memory()? / 2);
        let opts = KvOptions {
            budget_bytes: budget,
            block_size: bs,
        };
        let store = DeviceKv::bytes_per_block(p, bs) + DeviceKv::bytes_per_block(r, bs);
        let cap = DeviceCache::capacity(opts, bs, store);
        let (ps, rs) = (
            DeviceKv::new(gpu, p, cap, bs)?,
            DeviceKv::new(gpu, r, cap, bs)?,
        );
        let fp = self.fingerprint;
        self.cache = Some(DeviceCache::with_stores(fp, opts, bs, ps, rs, cap));
        Ok(())
    }
}

/// What every wave of one scoring call shares.
struct Pass<'a> {
    gpu: &'a Gpu,
    policy: &'a DeviceModel,
    reference: &'a DeviceModel,
    /// Without it (an α sweep's later points, no cache) only the reference
    /// runs; the policy's fields stay NaN.
    with_policy: bool,
    /// The LM heads folded into the scorer ([`LmHeadPath::folds`]).
    fold: bool,
    /// The delta rule's form and the attention kernel.
    kernels: ForwardKernels,
}

impl<'a> Pass<'a> {
    /// A call over both models, or the reference alone, on `gpu` with the
    /// LM heads and the delta rule as `paths` say. (From the pair's fields,
    /// so that its cache and counters stay free to borrow.)
    fn new(
        gpu: &'a Gpu,
        (policy, reference): (&'a DeviceModel, &'a DeviceModel),
        (path, kernels): (LmHeadPath, ForwardKernels),
        with_policy: bool,
    ) -> Pass<'a> {
        let models: &[&DeviceModel] = if with_policy {
            &[policy, reference]
        } else {
            &[reference]
        };
        Pass {
            gpu,
            policy,
            reference,
            with_policy,
            fold: path.folds(gpu, models),
            kernels,
        }
    }
}

/// Score one wave (nothing cached without `cache`): forward both models
/// over its new tokens, take the boundary rows' hidden states from the
/// cache, run both LM heads and the scorer on the wanted rows, and fill
/// `out` (and the wave's filled blocks: K/V in the forward, their last
/// hidden states and scores here).
fn score_wave(
    pass: &Pass<'_>,
    mut cache: Option<&mut DeviceCache>,
    batch: &[SeqRequest],
    wave: &[Admitted],
    out: &mut [TokenScores],
) -> Result<()> {
    let &Pass {
        gpu,
        policy,
        reference,
        with_policy,
        fold,
        kernels,
    } = pass;
    assert!(
        with_policy || cache.is_none(),
        "the cache holds both models' blocks"
    );
    let bs = cache.as_ref().map_or(1, |c| c.block_size());
    let plan = WavePlan::new(batch, wave, bs);
    if let Some(c) = cache.as_deref() {
        plan.scatter_cached(out, |id, slot| c.score(id, slot));
    }
    let n = plan.wanted.len();
    if n == 0 && plan.fills.is_empty() {
        return Ok(());
    }
    let seqs: Vec<(usize, usize)> = wave
        .iter()
        .zip(&plan.seqs)
        .map(|(a, s)| (a.hit.len() * bs, s.len))
        .collect();
    let layout = PagedBatch::with_past(&seqs);
    // Rows of the forward's output: the wanted rows in order (a boundary
    // row's slot is filled from the cache below), then each filled block's
    // last row.
    let mut rows: Vec<i32> = plan
        .wanted
        .iter()
        .map(|w| match w.row {
            Row::New(row) => row as i32,
            Row::Boundary(_) => 0,
        })
        .collect();
    rows.extend(plan.fills.iter().map(|&(_, row)| row as i32));
    let boundary: Vec<(usize, usize)> = (plan.wanted.iter().enumerate())
        .filter_map(|(i, w)| match w.row {
            Row::Boundary(id) => Some((id as usize, i)),
            Row::New(_) => None,
        })
        .collect();
    let last: Vec<(usize, usize)> = (plan.fills.iter().enumerate())
        .map(|(j, &(id, _))| (n + j, id as usize))
        .collect();
    let copies = match cache.as_deref() {
        Some(_) => {
            let members: Vec<_> = wave.iter().map(|a| (&a.hit[..], &a.fill[..])).collect();
            Some(WaveCopies::new(gpu, &members, &layout, bs, &plan.fills)?)
        }
        None => None,
    };
    let targets = plan.targets(batch);

    let dev_batch = DeviceBatch::upload(gpu, &plan.tokens, layout)?;
    let dev_rows = gpu.upload(&rows)?;
    let dev_targets = gpu.upload(&targets)?;
    let (boundary, last) = (
        RowCopies::upload(gpu, boundary)?,
        RowCopies::upload(gpu, last)?,
    );
    let mut hidden = Vec::with_capacity(2);
    let sides: &[(&DeviceModel, bool)] = if with_policy {
        &[(policy, true), (reference, false)]
    } else {
        &[(reference, false)]
    };
    for &(m, is_policy) in sides {
        let mut store = cache.as_deref_mut().map(|c| {
            if is_policy {
                &mut c.policy
            } else {
                &mut c.reference
            }
        });
        let kv = store.as_deref_mut().zip(copies.as_ref());
        let mut h = forward_rows(gpu, m, &dev_batch, &dev_rows, kv, kernels)?;
        if let Some(store) = store {
            let width = m.config.hidden_size;
            gpu.copy_rows(&store.last_hidden.all(), &mut h.all_mut(), &boundary, width)?;
            gpu.copy_rows(&h.all(), &mut store.last_hidden.all_mut(), &last, width)?;
        }
        hidden.push(h);
    }
    drop(dev_batch);
    if n == 0 {
        return Ok(());
    }
    if !with_policy {
        let stats = gpu.part(Part::LmHead, || {
            lm_head_stats(gpu, fold, None, (reference, &hidden[0]), &dev_targets, n)
        })?;
        let stats = stats
            .chunks_exact(4)
            .map(|s| [f32::NAN, s[1], f32::NAN, f32::NAN]);
        plan.scatter(out, stats, |_, _, _| {});
        return Ok(());
    }
    let policy_rows = Some((policy, &hidden[0]));
    let stats = gpu.part(Part::LmHead, || {
        let refs = (reference, &hidden[1]);
        lm_head_stats(gpu, fold, policy_rows, refs, &dev_targets, n)
    })?;
    let stats = stats.chunks_exact(4).map(|s| [s[0], s[1], s[2], s[3]]);
    match cache {
        // Keep each score in the filled block holding its position.
        Some(c) => plan.scatter(out, stats, |id, slot, s| c.set_score(id, slot, s)),
        None => plan.scatter(out, stats, |_, _, _| {}),
    }
    Ok(())
}

impl PairScorer for CudaPair {
    fn describe(&self) -> String {
        // The compute dtype is part of the description, so a caller (and a
        // test through `Scorer`) can tell a bf16 run from an f32 one.
        let models = (&self.policy, &self.reference);
        let fold = Pass::new(&self.gpu, models, self.paths(), true).fold;
        let hybrid = self.policy.config.is_hybrid() || self.reference.config.is_hybrid();
        // A family whose GPU parity has not run on a device (`--device cuda`
        // asked for it by name) says so wherever the backend is described.
        let unverified =
            crate::backend::gpu_unverified(&self.policy.config, &self.reference.config)
                .map_or(String::new(), |c| {
                    format!(", {}: GPU parity not yet run on a device", c.arch_name)
                });
        format!(
            "cuda:{} {} (compute {}/{}, LM head {}{}{}{unverified})",
            self.ordinal,
            self.gpu.describe(),
            self.policy.dtype.name(),
            self.reference.dtype.name(),
            if fold { "folded" } else { "GEMM" },
            if hybrid {
                format!(", delta rule {}", self.kernels.rule.name())
            } else {
                String::new()
            },
            match self.kernels.attention {
                AttnKernel::Auto => String::new(),
                k => format!(", attention {}", k.name()),
            }
        )
    }

    /// A merged reference at another α: formed host-side tensor by tensor
    /// from the mapped files (no file is re-read) and uploaded in the
    /// current reference's compute dtype. The prefix cache starts afresh
    /// (its blocks hold the old reference's K/V and scores).
    fn set_reference(&mut self, reference: Arc<Model>) -> Result<()> {
        let dtype = self.reference.dtype;
        self.cache = None;
        self.reference = DeviceModel::upload(&self.gpu, &reference, Some(dtype))?;
        self.gpu.synchronize()?;
        self.set_cache(self.kv_opts)
    }

    fn set_prefix_cache(&mut self, opts: Option<KvOptions>) -> Result<()> {
        self.set_cache(opts)
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        let gauges = self.cache.as_ref().map(|c| c.stats()).unwrap_or_default();
        Some(CacheStats {
            lookups: self.counters.lookups,
            hit_tokens: self.counters.hit_tokens,
            computed_tokens: self.counters.computed_tokens,
            ..gauges
        })
    }

    fn score(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        let mut out = self.begin(batch)?;
        let models = (&self.policy, &self.reference);
        let pass = Pass::new(&self.gpu, models, self.paths(), true);
        match self.cache.as_mut() {
            None => {
                count_uncached(&mut self.counters, batch);
                score_wave(&pass, None, batch, &uncached(batch), &mut out)?;
            }
            Some(c) => in_waves(c, batch, &mut self.counters, |c, wave| {
                score_wave(&pass, Some(c), batch, wave, &mut out)
            })?,
        }
        Ok(out)
    }

    /// The reference alone (an α sweep's later points): its forward, LM head
    /// and log-probs; the policy's fields NaN. Uncached, as on the CPU.
    fn score_reference(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        let mut out = self.begin(batch)?;
        count_uncached(&mut self.counters, batch);
        let models = (&self.policy, &self.reference);
        let pass = Pass::new(&self.gpu, models, self.paths(), false);
        score_wave(&pass, None, batch, &uncached(batch), &mut out)?;
        Ok(out)
    }
}
