//! The scores of the wanted rows from both models' final hidden states, by
//! one of two paths:
//!
//! * **GEMM** — cuBLAS writes f32 logits (in chunks of [`LOGIT_BUDGET`]
//!   floats per model) and kernels/fused_logprob.cu reads them once;
//! * **fold** — kernels/lm_head_fold.cu computes the logits tile by tile in
//!   registers (mma.sync) and folds them into the same statistics, so no
//!   logits touch device memory (bf16/f16 models, sm_80+).
//!
//! [`LmHeadPath`] chooses; both give `[n, 4]` per row: log π_θ, log π_ref,
//! the policy's entropy and the mean of its top-20 log-probs.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::device::{
    CudaResultExt, DevTensor, DevView, Gpu, backend_err, cfg, choice_from_env, sub, sub_mut,
};
use super::kernels::{check, dims_fit, typed, warp_per_row};
use super::weights::DeviceModel;
use crate::Result;
use crate::consts::{FOLD_BM, FOLD_BN, FOLD_SMEM_BYTES, FOLD_THREADS, FUSED_PARTIAL_FLOATS};
use crate::model::weights::DType;

/// Floats of logits per model held at once by the GEMM path (512 MiB).
pub const LOGIT_BUDGET: usize = 128 << 20;
/// Most vocabulary splits of the folded LM head (one warp merges a row's).
const FOLD_MAX_SPLITS: usize = 32;

/// How a pair's LM heads and scores are computed on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LmHeadPath {
    /// The faster path for the shape: the GEMM path at every shape measured
    /// (H200, docs/gpu-results.md run 12: the fold took 2.0–2.4× the GEMM
    /// path's time at 1,024–16,384 rows of the 0.5B, 7B and Gemma-4-E4B
    /// heads; cuBLAS's wgmma GEMM runs at 370–574 TFLOP/s there, the fold's
    /// mma.sync at 154–238, and the logits round trip it saves costs less).
    #[default]
    Auto,
    /// cuBLAS GEMM into f32 logits, then the fused scorer.
    Gemm,
    /// The folded kernel where the models allow it (bf16/f16 weights, hidden
    /// size a multiple of 8, sm_80+), else the GEMM path.
    Fold,
}

impl LmHeadPath {
    /// `PADV_CUDA_LM_HEAD` (`auto`, `gemm` or `fold`); unset is `auto`.
    pub fn from_env() -> Result<LmHeadPath> {
        choice_from_env("PADV_CUDA_LM_HEAD")
    }

    pub fn name(self) -> &'static str {
        match self {
            LmHeadPath::Auto => "auto",
            LmHeadPath::Gemm => "gemm",
            LmHeadPath::Fold => "fold",
        }
    }

    /// Whether this choice folds for these models on `gpu`.
    pub fn folds(self, gpu: &Gpu, models: &[&DeviceModel]) -> bool {
        match self {
            LmHeadPath::Auto | LmHeadPath::Gemm => false,
            LmHeadPath::Fold => models.iter().all(|m| foldable(gpu, m)),
        }
    }
}

impl std::str::FromStr for LmHeadPath {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<LmHeadPath> {
        match s.trim() {
            "auto" => Ok(LmHeadPath::Auto),
            "gemm" => Ok(LmHeadPath::Gemm),
            "fold" => Ok(LmHeadPath::Fold),
            other => Err(crate::Error::Backend(format!(
                "PADV_CUDA_LM_HEAD must be auto, gemm or fold, not `{other}`"
            ))),
        }
    }
}

/// Whether the folded kernel takes this model here.
fn foldable(gpu: &Gpu, m: &DeviceModel) -> bool {
    let w = m.config.hidden_size;
    gpu.arch().0 >= 8 && fold_refuses(m.dtype, m.lm_head().dtype, w).is_none()
}

/// Why the folded kernel cannot take hidden states of `hidden` dtype and
/// `width` against LM-head rows of `lm_head` dtype (it wants 16-bit operands
/// of one type and whole 16-byte copies), or `None`.
fn fold_refuses(hidden: DType, lm_head: DType, width: usize) -> Option<String> {
    if hidden != lm_head || hidden == DType::F32 {
        return Some(format!(
            "hidden {} and LM head {} must be one 16-bit dtype",
            hidden.name(),
            lm_head.name()
        ));
    }
    (width == 0 || !width.is_multiple_of(8))
        .then(|| format!("hidden size {width} is not a multiple of 8"))
}

/// One model's side of the LM head: its final hidden states at the scored
/// rows and its LM-head rows.
pub struct HeadSide<'a> {
    /// `[n, width]` final hidden states (bf16/f16 for the fold).
    pub hidden: DevView<'a>,
    /// `[vocab, width]` LM-head rows, the hidden states' dtype.
    pub lm_head: DevView<'a>,
    pub width: usize,
    /// Gemma's final soft-cap: logits become cap·tanh(z / cap).
    pub softcap: Option<f32>,
}

impl<'a> HeadSide<'a> {
    /// Model `m`'s side over the first rows of its hidden states `h`.
    pub fn of(m: &'a DeviceModel, h: &'a DevTensor) -> HeadSide<'a> {
        HeadSide {
            hidden: h.all(),
            lm_head: m.lm_head().all(),
            width: m.config.hidden_size,
            softcap: m.config.final_logit_softcap,
        }
    }
}

impl Gpu {
    /// Vocabulary splits for `rows` rows: the count that minimises the
    /// waves times each block's sub-tiles (plus about two sub-tiles of
    /// per-block start-up: the first top-k fill and the pipeline), with two
    /// blocks per multiprocessor (the kernel's `__launch_bounds__`).
    pub fn fold_splits(&self, rows: usize, vocab: usize) -> usize {
        let tiles = rows.div_ceil(FOLD_BM).max(1);
        let slots = 2 * self.multiprocessors().max(1) as usize;
        let cost = |s: usize| {
            tiles.saturating_mul(s).div_ceil(slots) * (vocab.div_ceil(s).div_ceil(FOLD_BN) + 2)
        };
        (1..=FOLD_MAX_SPLITS.min(vocab.div_ceil(FOLD_BN)).max(1))
            .min_by_key(|&s| (cost(s), s))
            .unwrap_or(1)
    }

    /// The folded LM head and scorer — kernels/lm_head_fold.cu: `out[r]` =
    /// (log π_θ, log π_ref, entropy, top-20 mean) of row r's `targets[r]`,
    /// from each side's hidden states and LM head, over `splits` vocabulary
    /// splits (clamped to 1..=32; `None`: [`Gpu::fold_splits`]). Without
    /// `policy` (the reference alone) the policy's columns repeat the
    /// reference's.
    pub fn lm_head_fold(
        &self,
        policy: Option<&HeadSide<'_>>,
        reference: &HeadSide<'_>,
        targets: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, f32>,
        vocab: usize,
        splits: Option<usize>,
    ) -> Result<()> {
        let n = targets.len();
        let splits = splits.unwrap_or_else(|| self.fold_splits(n, vocab));
        check(self.arch().0 >= 8, || {
            "lm_head_fold: needs sm_80 or newer (mma.sync, cp.async)".into()
        })?;
        check(out.len() >= 4 * n, || {
            format!("lm_head_fold: out has {}", out.len())
        })?;
        for s in policy.iter().copied().chain([reference]) {
            let w = s.width;
            if let Some(why) = fold_refuses(s.hidden.dtype, s.lm_head.dtype, w) {
                return Err(backend_err(format!("cuda: lm_head_fold: {why}")));
            }
            check(s.hidden.len >= n * w && s.lm_head.len >= vocab * w, || {
                format!(
                    "lm_head_fold: hidden {} < {n}×{w} or LM head {} < {vocab}×{w}",
                    s.hidden.len, s.lm_head.len
                )
            })?;
            dims_fit(&[n, vocab, w, n * w, vocab * w])?;
        }
        if n == 0 {
            return Ok(());
        }
        let cols = vocab.div_ceil(FOLD_BN);
        let splits = splits.clamp(1, FOLD_MAX_SPLITS).min(cols);
        let per_split = cols.div_ceil(splits) * FOLD_BN;
        let splits = vocab.div_ceil(per_split);
        let mut part = self.alloc_f32(n * splits * FUSED_PARTIAL_FLOATS)?;
        let mut z_p = self.alloc_f32(n)?;
        let mut z_r = self.alloc_f32(n)?;
        let grid = (n.div_ceil(FOLD_BM) as u32, splits as u32, 1);
        let smem = FOLD_SMEM_BYTES as u32;
        let (nn, v, ps) = (n as i32, vocab as i32, per_split as i32);
        let sides = [
            (policy, "policy", &mut z_p),
            (Some(reference), "reference", &mut z_r),
        ];
        for (side, role, z) in sides {
            let Some(s) = side else { continue };
            let name = typed(&format!("lm_head_fold_{role}"), s.hidden.dtype);
            let f = self.function("lm_head_fold", &name, smem)?;
            let (d, cap) = (s.width as i32, s.softcap.unwrap_or(0.0));
            let mut b = self.stream.launch_builder(&f);
            b.arg(&s.hidden.view)
                .arg(&s.lm_head.view)
                .arg(targets)
                .arg(&mut part)
                .arg(z)
                .arg(&nn)
                .arg(&d)
                .arg(&v)
                .arg(&ps)
                .arg(&cap);
            // SAFETY: shapes checked above (hidden ≥ n×d, LM head ≥ vocab×d,
            // d % 8 == 0 so every 16-byte copy is aligned and in bounds);
            // targets < vocab (checked by the planner); `part` holds
            // n × splits partials and `z` n floats; the dynamic shared memory
            // is the kernel's FoldSmem (static_assert against FOLD_SMEM_BYTES).
            unsafe { b.launch(cfg(grid, FOLD_THREADS as u32, smem)) }.ctx(&name)?;
        }
        let f = self.function("lm_head_fold", "lm_head_fold_finish", 0)?;
        let (sp, hp) = (splits as i32, policy.is_some() as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&z_p)
            .arg(&z_r)
            .arg(&part)
            .arg(out)
            .arg(&nn)
            .arg(&sp)
            .arg(&hp);
        // SAFETY: one warp per row, rows ≥ n return at once; every partial
        // and target logit of rows < n was written above.
        unsafe { b.launch(warp_per_row(n)) }.ctx("lm_head_fold_finish")?;
        Ok(())
    }
}

/// Both models' scores at `targets.len()` rows, by the fold or the GEMM
/// path, into `stats` (`[n, 4]`). Without `policy` (the reference alone)
/// the policy's columns are to be ignored.
pub fn lm_head_scores(
    gpu: &Gpu,
    fold: bool,
    policy: Option<&HeadSide<'_>>,
    reference: &HeadSide<'_>,
    targets: &CudaView<'_, u32>,
    stats: &mut CudaViewMut<'_, f32>,
    vocab: usize,
) -> Result<()> {
    if fold {
        gpu.lm_head_fold(policy, reference, targets, stats, vocab, None)
    } else {
        gemm_scores(gpu, policy, reference, targets, stats, vocab)
    }
}

/// [`lm_head_scores`] for two device models over the first `n` rows of
/// their hidden states, downloaded: `[n, 4]` on the host.
pub fn lm_head_stats(
    gpu: &Gpu,
    fold: bool,
    policy: Option<(&DeviceModel, &DevTensor)>,
    (reference, hr): (&DeviceModel, &DevTensor),
    dev_targets: &CudaSlice<u32>,
    n: usize,
) -> Result<Vec<f32>> {
    let mut stats = gpu.alloc_f32(4 * n)?;
    let p = policy.map(|(m, h)| HeadSide::of(m, h));
    let r = HeadSide::of(reference, hr);
    let targets = sub(dev_targets, 0, n)?;
    let vocab = reference.config.vocab_size;
    lm_head_scores(
        gpu,
        fold,
        p.as_ref(),
        &r,
        &targets,
        &mut stats.as_view_mut(),
        vocab,
    )?;
    gpu.download(&stats.as_view())
}

/// The GEMM path: per chunk of rows, both LM heads (cuBLAS, f32 logits) and
/// the fused scorer. Without `policy` the reference's logits stand on both
/// sides of the fused scorer. Soft-capped models are not taken (the CUDA
/// forward runs none).
fn gemm_scores(
    gpu: &Gpu,
    policy: Option<&HeadSide<'_>>,
    reference: &HeadSide<'_>,
    targets: &CudaView<'_, u32>,
    stats: &mut CudaViewMut<'_, f32>,
    vocab: usize,
) -> Result<()> {
    let n = targets.len();
    // The fused scorer caps both rows alike; a pair's sides share a family.
    let softcap = reference.softcap;
    check(policy.is_none_or(|p| p.softcap == softcap), || {
        "lm head: the two models' logit soft-caps differ".into()
    })?;
    if n == 0 {
        return Ok(());
    }
    let ld = vocab.next_multiple_of(4);
    let chunk = (LOGIT_BUDGET / ld).clamp(16, 4096).min(n);
    let mut lp = match policy {
        Some(_) => Some(gpu.alloc_f32(chunk * ld)?),
        None => None,
    };
    let mut lr = gpu.alloc_f32(chunk * ld)?;
    // Rows [c0, c1) of a side's LM head into `out`.
    let logits = |s: &HeadSide<'_>, out: &mut CudaSlice<f32>, c0, c1| {
        let (w, c) = (s.width, c1 - c0);
        gpu.matmul_wt(
            &s.hidden.slice(c0 * w, c1 * w)?,
            &s.lm_head,
            &mut sub_mut(out, 0, c * ld)?,
            c,
            vocab,
            w,
            ld,
        )
    };
    for c0 in (0..n).step_by(chunk) {
        let c1 = (c0 + chunk).min(n);
        let c = c1 - c0;
        logits(reference, &mut lr, c0, c1)?;
        if let (Some(ps), Some(lp)) = (policy, lp.as_mut()) {
            logits(ps, lp, c0, c1)?;
        }
        gpu.fused_logprob(
            &sub(lp.as_ref().unwrap_or(&lr), 0, c * ld)?,
            &sub(&lr, 0, c * ld)?,
            &targets.slice(c0..c1),
            &mut stats.slice_mut(4 * c0..4 * c1),
            vocab,
            ld,
            softcap,
        )?;
    }
    Ok(())
}
