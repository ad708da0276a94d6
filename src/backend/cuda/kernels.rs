//! Launchers for the kernels in `kernels/*.cu` and the cuBLAS GEMM. Each one
//! checks dtypes and buffer sizes against the shape it is given before
//! launching (a kernel reading past a buffer is a silent wrong answer or a
//! device fault, so the check belongs here), skips empty work, and names the
//! `kernels/` file and CPU twin it corresponds to.
//!
//! Buffers are passed as views: `CudaView<f32>` / `CudaViewMut<f32>` for the
//! f32 residual stream, GEMM outputs and logits; [`DevView`] / [`DevViewMut`]
//! for tensors in a weight dtype (GEMM operands, the KV pool).

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchArgs, PushKernelArg};

use super::device::{CudaResultExt, DevView, DevViewMut, Gpu, backend_err, cfg};
use crate::Result;
use crate::backend::cpu::ops::AttnShape;
use crate::model::config::Act;
use crate::model::weights::DType;

/// Tokens per KV-pool block (`KV_BLOCK` in kernels/attention.cu, from [`crate::consts`]).
pub const KV_BLOCK: usize = crate::consts::KV_BLOCK;
/// Queries per attention tile (`ATTN_BR` in kernels/attention.cu, from [`crate::consts`]).
pub const ATTN_BR: usize = crate::consts::ATTN_BR;
pub use super::attention::{AttnKernel, MAX_HEAD_DIM, MAX_KV_SPLITS, MMA_HEAD_DIMS};
/// Top log-probs averaged for self-certainty (`TOP_K` in fused_logprob.cu, from [`crate::consts`]).
pub const FUSED_TOP_K: usize = crate::consts::TOP_K;
/// Most slices one row is cut into (one warp merges them).
const FUSED_MAX_SPLITS: usize = 32;
/// Floats per slice partial (`struct Partial` in fused_logprob.cu).
const FUSED_PARTIAL_FLOATS: usize = crate::consts::FUSED_PARTIAL_FLOATS;
/// Threads of the fused scorer's kernels (their `__launch_bounds__`).
const FUSED_THREADS: u32 = crate::consts::FUSED_THREADS as u32;

const THREADS: u32 = 256;
/// Passed for an absent optional pointer argument.
static NULL: u64 = 0;

/// An optional pointer argument of a launch: the buffer, or a null pointer.
pub(super) trait ArgOrNull {
    fn arg_or_null<A>(&mut self, arg: Option<A>) -> &mut Self
    where
        Self: PushKernelArg<A>;
}

impl<'a> ArgOrNull for LaunchArgs<'a> {
    fn arg_or_null<A>(&mut self, arg: Option<A>) -> &mut Self
    where
        Self: PushKernelArg<A>,
    {
        match arg {
            Some(a) => self.arg(a),
            None => PushKernelArg::<&u64>::arg(self, &NULL),
        }
    }
}

/// Kernel name `<base>_<dtype>`.
pub(super) fn typed(base: &str, d: DType) -> String {
    format!("{base}_{}", d.name())
}

pub(super) fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(backend_err(format!("cuda: {}", what())))
    }
}

/// The launch of a finishing kernel: one warp per row of `n`, blocks of
/// `FUSED_THREADS` threads.
pub(super) fn warp_per_row(n: usize) -> cudarc::driver::LaunchConfig {
    let rows_per_block = FUSED_THREADS as usize / 32;
    cfg((n.div_ceil(rows_per_block) as u32, 1, 1), FUSED_THREADS, 0)
}

/// A residual add's `[rows_x, hidden]` delta (in the dtype of the norm's
/// output), the `[hidden]` norm it passes first (if any), and the factor
/// the sum is then scaled by.
pub type Residual<'v, 'a> = (&'v DevView<'a>, Option<&'v CudaView<'a, f32>>, f32);

/// Runs of 4 elements a thread of `residual_rmsnorm`'s vector path holds
/// (`RMS_CHUNKS` in kernels/rmsnorm.cu).
const RMS_CHUNKS: usize = 4;

/// How `residual_rmsnorm` walks a row: `Auto` holds it in registers in runs
/// of 4 where the row and its pointers allow (kernels/rmsnorm.cu);
/// `Strided` always strides one element at a time (the kernel before the
/// vector path, kept for the benches' comparison and odd widths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowWalk {
    Auto,
    Strided,
}

pub(super) fn dims_fit(values: &[usize]) -> Result<()> {
    check(values.iter().all(|&v| v <= i32::MAX as usize), || {
        format!("dimension in {values:?} exceeds i32")
    })
}

impl Gpu {
    /// `out[t] = f32(table[tokens[t]]) · scale` — kernels/embedding.cu; CPU
    /// twin: `cpu::embed::embed`. Token ids must be `< vocab` (checked on
    /// the host by the caller).
    pub fn embedding(
        &self,
        tokens: &CudaView<'_, u32>, // [n]
        table: &DevView<'_>,        // [vocab, hidden]
        hidden: usize,
        scale: f32,
        out: &mut CudaViewMut<'_, f32>, // [n, hidden]
    ) -> Result<()> {
        let n = tokens.len();
        check(hidden > 0 && table.len.is_multiple_of(hidden), || {
            format!("embedding: table of {} is not [vocab, {hidden}]", table.len)
        })?;
        check(out.len() >= n * hidden, || {
            format!("embedding: out has {} < {n}×{hidden}", out.len())
        })?;
        dims_fit(&[n, hidden])?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("embedding", &typed("embedding", table.dtype), 0)?;
        let h = hidden as i32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(tokens).arg(&table.view).arg(out).arg(&h).arg(&scale);
        // SAFETY: argument types and sizes match the kernel signature (checked above).
        unsafe { b.launch(cfg((n as u32, 1, 1), THREADS, 0)) }.ctx("embedding")?;
        Ok(())
    }

    /// Residual add + RMSNorm — kernels/rmsnorm.cu; CPU twin: `x += delta`
    /// (`x += rms_norm(delta)` when delta's norm is given: a post-norm), `x
    /// *= scale` (Gemma's layer scalar; 1 elsewhere), then `ops::rms_norm`
    /// (or `x` as it is without `weight`: no input norm).
    /// Without `rows`: every row of `x` (in place when `delta` is given) into
    /// `out[rows_x, hidden]`; with `rows`: only those rows into
    /// `out[rows.len(), hidden]`, `x` untouched.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_rmsnorm(
        &self,
        x: &mut CudaViewMut<'_, f32>, // [rows_x, hidden]
        delta: Option<Residual<'_, '_>>,
        weight: Option<&CudaView<'_, f32>>, // [hidden]; None: out = x, no norm
        rows: Option<&CudaView<'_, i32>>,   // [n] (values < rows_x, not checked on device)
        out: &mut DevViewMut<'_>,           // [n, hidden]
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let walk = RowWalk::Auto;
        self.residual_rmsnorm_walk(x, delta, weight, rows, out, hidden, eps, walk)
    }

    /// [`Gpu::residual_rmsnorm`] walking each row as `walk` says (the
    /// benches compare the two walks).
    #[allow(clippy::too_many_arguments)]
    pub fn residual_rmsnorm_walk(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        delta: Option<Residual<'_, '_>>,
        weight: Option<&CudaView<'_, f32>>,
        rows: Option<&CudaView<'_, i32>>,
        out: &mut DevViewMut<'_>,
        hidden: usize,
        eps: f32,
        walk: RowWalk,
    ) -> Result<()> {
        check(hidden > 0 && x.len().is_multiple_of(hidden), || {
            format!("rmsnorm: x of {} is not [rows, {hidden}]", x.len())
        })?;
        let delta_norm = delta.and_then(|d| d.1);
        for w in weight.iter().chain(delta_norm.iter()) {
            check(w.len() == hidden, || {
                format!(
                    "rmsnorm: a weight has {} elements, hidden is {hidden}",
                    w.len()
                )
            })?;
        }
        if let Some((d, ..)) = delta {
            check(d.len == x.len(), || {
                format!("rmsnorm: delta has {} elements, x has {}", d.len, x.len())
            })?;
            check(d.dtype == out.dtype, || {
                format!(
                    "rmsnorm: delta is {}, out {}",
                    d.dtype.name(),
                    out.dtype.name()
                )
            })?;
        }
        let n = rows.map_or(x.len() / hidden, |r| r.len());
        check(out.len >= n * hidden, || {
            format!("rmsnorm: out has {} < {n}×{hidden}", out.len)
        })?;
        dims_fit(&[n, hidden])?;
        if n == 0 {
            return Ok(());
        }
        // Runs of 4 elements held in registers where the row fits in one
        // block's and every pointer is aligned for them (x and the weights
        // 16 bytes, delta and out 4 elements).
        let es = out.dtype.size() as u64;
        let s = &self.stream;
        let ptrs = [
            (Some(x.device_ptr(s).0), 16),
            (Some(out.view.device_ptr(s).0), 4 * es),
            (delta.map(|d| d.0.view.device_ptr(s).0), 4 * es),
            (weight.map(|w| w.device_ptr(s).0), 16),
            (delta_norm.map(|w| w.device_ptr(s).0), 16),
        ];
        let chunks = hidden / 4;
        let vec = walk == RowWalk::Auto
            && hidden.is_multiple_of(4)
            && chunks <= RMS_CHUNKS * 1024
            && (ptrs.iter()).all(|&(p, a)| p.is_none_or(|p| p.is_multiple_of(a)));
        // A block per row, sized to it in the vector path (64 threads at
        // hidden 896), else THREADS striding over it.
        let threads = if vec {
            (chunks.div_ceil(RMS_CHUNKS).div_ceil(32) * 32) as u32
        } else {
            THREADS
        };
        let f = self.function("rmsnorm", &typed("residual_rmsnorm", out.dtype), 0)?;
        let (h, e, sc, v) = (
            hidden as i32,
            eps,
            delta.map_or(1.0, |d| d.2),
            i32::from(vec),
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg_or_null(delta.map(|d| &d.0.view))
            .arg_or_null(delta_norm)
            .arg_or_null(weight)
            .arg(&mut out.view)
            .arg_or_null(rows)
            .arg(&h)
            .arg(&e)
            .arg(&sc)
            .arg(&v);
        // SAFETY: as in `embedding`; the vector path's accesses are aligned
        // (checked above) and in bounds (hidden % 4 == 0, the block covers
        // the row's chunks).
        unsafe { b.launch(cfg((n as u32, 1, 1), threads, 0)) }.ctx("residual_rmsnorm")?;
        Ok(())
    }

    /// Bias, q/k RMSNorm, RoPE and the paged KV write — kernels/rope.cu; CPU
    /// twins: the bias loop, `ops::rms_norm_row`, `ops::rope_row`. The q/k
    /// norm weights are per head (`[hd]` each) or over the whole projection
    /// (`[qd]`, `[kvd]`: Olmo 2/3), told apart by their lengths; `rope` is
    /// the layer's `[rotary_dim / 2]` frequencies (rotary_dim < hd: partial
    /// rotary) and the factor its cos/sin carry. With `gate_out` (an output
    /// gate, Qwen 3.5) `qkv` rows are `[heads × (query | gate), k, v]` and
    /// the gates go there. `v_norm`: v is RMS-normalised per head without a
    /// weight (Gemma 4). A layer reading another layer's K/V passes
    /// `shape.num_kv_heads = 0`: `qkv` holds q alone and the pools are not
    /// touched.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope(
        &self,
        qkv: &DevView<'_>, // [n, qw + 2·kvd], qw = qd (2·qd gated), the pools' dtype
        bias: Option<&CudaView<'_, f32>>, // [qw + 2·kvd]
        (q_norm, k_norm): (Option<&CudaView<'_, f32>>, Option<&CudaView<'_, f32>>), // [hd] or [qd], [kvd]
        pos: &CudaView<'_, i32>,                                                    // [n]
        slots: &CudaView<'_, i32>, // [n] (values < pool_rows, not checked on device)
        (inv_freq, rope_scale): (&CudaView<'_, f32>, f32), // [hd / 2]
        q_out: &mut DevViewMut<'_>, // [n, qd], the pools' dtype
        gate_out: Option<&mut CudaViewMut<'_, f32>>, // [n, qd]
        k_pool: &mut DevViewMut<'_>, // [pool_rows, kvd]
        v_pool: &mut DevViewMut<'_>, // [pool_rows, kvd]
        shape: AttnShape,
        v_norm: bool,
        eps: f32,
    ) -> Result<()> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            ..
        } = shape;
        let (qd, kvd) = (nh * hd, nkv * hd);
        let qw = if gate_out.is_some() { 2 * qd } else { qd };
        let n = pos.len();
        let rotary = 2 * inv_freq.len();
        check(hd.is_multiple_of(2) && hd > 0 && nh > 0, || {
            format!("qkv_rope: bad head geometry {shape:?}")
        })?;
        check(qkv.len == n * (qw + 2 * kvd), || {
            format!("qkv_rope: qkv has {} != {n}×{}", qkv.len, qw + 2 * kvd)
        })?;
        check(qkv.dtype == k_pool.dtype, || {
            format!(
                "qkv_rope: qkv is {}, the pools {}",
                qkv.dtype.name(),
                k_pool.dtype.name()
            )
        })?;
        if let Some(g) = gate_out.as_ref() {
            check(g.len() == n * qd, || {
                format!("qkv_rope: gate_out has {}", g.len())
            })?;
        }
        check(q_out.dtype == k_pool.dtype, || {
            format!(
                "qkv_rope: q_out is {}, the pools {}",
                q_out.dtype.name(),
                k_pool.dtype.name()
            )
        })?;
        check(slots.len() == n && q_out.len == n * qd, || {
            format!(
                "qkv_rope: slots {} / q_out {} for {n} tokens",
                slots.len(),
                q_out.len
            )
        })?;
        check(rotary > 0 && rotary <= hd, || {
            format!(
                "qkv_rope: inv_freq has {} for head_dim {hd}",
                inv_freq.len()
            )
        })?;
        if let Some(b) = bias {
            check(b.len() == qw + 2 * kvd, || {
                format!("qkv_rope: bias has {}", b.len())
            })?;
        }
        // Both norms, or q's alone when there are no k heads here.
        let lens = (q_norm.map(|w| w.len()), k_norm.map(|w| w.len()));
        let full = lens == (Some(qd), Some(kvd)) && (qd, kvd) != (hd, hd);
        let ok = match lens {
            (None, None) => true,
            (Some(q), k) if nkv == 0 => q == hd && k.is_none(),
            (Some(q), Some(k)) => (q, k) == (hd, hd) || full,
            _ => false,
        };
        check(ok, || {
            format!("qkv_rope: q/k norm weights of {lens:?}, want ({hd}, {hd}) or ({qd}, {kvd})")
        })?;
        check(
            k_pool.dtype == v_pool.dtype
                && k_pool.len == v_pool.len
                && (nkv == 0 || k_pool.len.is_multiple_of(kvd)),
            || "qkv_rope: k/v pools differ or are not [rows, kv_heads·head_dim]".into(),
        )?;
        dims_fit(&[n, qw + 2 * kvd])?;
        if n == 0 {
            return Ok(());
        }
        let smem = ((qd + kvd + hd) * 4) as u32;
        let f = self.function("rope", &typed("qkv_rope", k_pool.dtype), smem)?;
        let (h, kh, d, fw, rd) = (nh as i32, nkv as i32, hd as i32, full as i32, rotary as i32);
        let vn = i32::from(v_norm);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&qkv.view)
            .arg_or_null(bias)
            .arg_or_null(q_norm)
            .arg_or_null(k_norm)
            .arg(pos)
            .arg(slots)
            .arg(inv_freq)
            .arg(&mut q_out.view)
            .arg_or_null(gate_out)
            .arg(&mut k_pool.view)
            .arg(&mut v_pool.view)
            .arg(&h)
            .arg(&kh)
            .arg(&d)
            .arg(&eps)
            .arg(&fw)
            .arg(&rope_scale)
            .arg(&rd)
            .arg(&vn);
        // SAFETY: as in `embedding`.
        unsafe { b.launch(cfg((n as u32, 1, 1), THREADS, smem)) }.ctx("qkv_rope")?;
        Ok(())
    }

    /// `attn ← attn · sigmoid(gate)` — Qwen 3.5's gated attention output
    /// (kernels/rope.cu); CPU twin: `gate_sigmoid` in cpu/mixer.rs.
    pub fn gate_sigmoid_mul(
        &self,
        attn: &mut DevViewMut<'_>, // [n, qd]
        gate: &CudaView<'_, f32>,  // [n, qd]
        qd: usize,
    ) -> Result<()> {
        let n = gate.len() / qd.max(1);
        check(qd > 0 && gate.len() == n * qd && attn.len >= n * qd, || {
            format!(
                "gate_sigmoid_mul: gate {} / attn {} for width {qd}",
                gate.len(),
                attn.len
            )
        })?;
        dims_fit(&[n, qd])?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("rope", &typed("gate_sigmoid_mul", attn.dtype), 0)?;
        let q = qd as i32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut attn.view).arg(gate).arg(&q);
        // SAFETY: shapes checked above.
        let grid = (n as u32, qd.div_ceil(THREADS as usize) as u32, 1);
        unsafe { b.launch(cfg(grid, THREADS, 0)) }.ctx("gate_sigmoid_mul")?;
        Ok(())
    }

    /// `out = act(gate) · up` (SiLU: SwiGLU; GELU-tanh: GeGLU) —
    /// kernels/act_mul.cu; CPU twin: `mlp::act_mul_inplace`. `gate_up` and
    /// `out` share one dtype.
    pub fn act_mul(
        &self,
        act: Act,
        gate_up: &DevView<'_>,    // [n, 2·inter]
        out: &mut DevViewMut<'_>, // [n, inter]
        inter: usize,
    ) -> Result<()> {
        check(gate_up.dtype == out.dtype, || {
            format!(
                "act_mul: gate_up is {}, out {}",
                gate_up.dtype.name(),
                out.dtype.name()
            )
        })?;
        check(inter > 0 && gate_up.len.is_multiple_of(2 * inter), || {
            format!("act_mul: gate_up of {} is not [n, 2×{inter}]", gate_up.len)
        })?;
        let n = gate_up.len / (2 * inter);
        check(out.len >= n * inter, || {
            format!("act_mul: out has {}", out.len)
        })?;
        dims_fit(&[n, 2 * inter])?;
        if n == 0 {
            return Ok(());
        }
        // 16 bytes per thread and operand where rows and starts allow.
        let per = 16 / out.dtype.size();
        let aligned = |p: u64| p.is_multiple_of(16);
        let vec = inter.is_multiple_of(per)
            && aligned(gate_up.view.device_ptr(&self.stream).0)
            && aligned(out.view.device_ptr(&self.stream).0);
        let base = match act {
            Act::Silu => "act_mul_silu",
            Act::GeluTanh => "act_mul_gelu_tanh",
        };
        let name = typed(base, out.dtype);
        let f = self.function("act_mul", &name, 0)?;
        let (i, v) = (inter as i32, i32::from(vec));
        let mut b = self.stream.launch_builder(&f);
        b.arg(&gate_up.view).arg(&mut out.view).arg(&i).arg(&v);
        let threads = if vec { inter / per } else { inter };
        let grid = (n as u32, threads.div_ceil(THREADS as usize) as u32, 1);
        // SAFETY: as in `embedding`; the vector path's 16-byte accesses are
        // aligned (checked above) and in bounds (inter % per == 0).
        unsafe { b.launch(cfg(grid, THREADS, 0)) }.ctx(&name)?;
        Ok(())
    }

    /// Fused scoring of `n` row pairs — kernels/fused_logprob.cu; CPU twin:
    /// `score::fused::row_stats` (policy) and `row_logp` (reference).
    /// `out[4·i ..]` = (logp_policy, logp_reference, entropy, top_mean).
    /// `softcap`: both rows' logits are read as `c · tanh(z / c)` (Gemma).
    #[allow(clippy::too_many_arguments)]
    pub fn fused_logprob(
        &self,
        logits_p: &CudaView<'_, f32>,   // [n, ld]
        logits_r: &CudaView<'_, f32>,   // [n, ld]
        targets: &CudaView<'_, u32>,    // [n] (< vocab, checked on the host)
        out: &mut CudaViewMut<'_, f32>, // [n, 4]
        vocab: usize,
        ld: usize,
        softcap: Option<f32>,
    ) -> Result<()> {
        // Slices per row only when the rows alone leave multiprocessors idle
        // (fewer than 2 blocks each; at least 1024 float4s per slice): each
        // slice pays block-wide merges, and on an H200 at 1024 rows one
        // block per row ran at 3.5 TB/s, 9 slices at 2.1, 32 at 1.0.
        let sms = self.multiprocessors() as usize;
        let n = targets.len().max(1);
        let splits = (2 * sms).div_ceil(n).min((vocab / 4).div_ceil(1024));
        self.fused_logprob_splits(logits_p, logits_r, targets, out, vocab, ld, softcap, splits)
    }

    /// [`Gpu::fused_logprob`] with each row cut into `splits` slices
    /// (clamped to 1..=32; benches sweep it).
    #[allow(clippy::too_many_arguments)]
    pub fn fused_logprob_splits(
        &self,
        logits_p: &CudaView<'_, f32>,
        logits_r: &CudaView<'_, f32>,
        targets: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, f32>,
        vocab: usize,
        ld: usize,
        softcap: Option<f32>,
        splits: usize,
    ) -> Result<()> {
        let n = targets.len();
        check(softcap.is_none_or(|c| c.is_finite() && c > 0.0), || {
            format!("fused_logprob: soft-cap {softcap:?} must be positive")
        })?;
        check(ld.is_multiple_of(4) && ld >= vocab && vocab > 0, || {
            format!("fused_logprob: ld {ld} must be ≥ vocab {vocab} and a multiple of 4")
        })?;
        check(logits_p.len() >= n * ld && logits_r.len() >= n * ld, || {
            format!("fused_logprob: logits shorter than {n}×{ld}")
        })?;
        check(out.len() >= 4 * n, || {
            format!("fused_logprob: out has {}", out.len())
        })?;
        dims_fit(&[n, ld])?;
        if n == 0 {
            return Ok(());
        }
        let splits = splits.clamp(1, FUSED_MAX_SPLITS);
        let mut part = self.alloc_f32(n * splits * FUSED_PARTIAL_FLOATS)?;
        let (v, l, nn, sp) = (vocab as i32, ld as i32, n as i32, splits as i32);
        let cap = softcap.unwrap_or(0.0);
        let f = self.function("fused_logprob", "fused_logprob_partial", 0)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(logits_p)
            .arg(logits_r)
            .arg(&mut part)
            .arg(&v)
            .arg(&l)
            .arg(&cap);
        // SAFETY: as in `embedding`; rows are 16-byte aligned (ld % 4 == 0 and
        // device allocations are 256-byte aligned; views start at row bounds);
        // `part` holds n × splits partials.
        unsafe { b.launch(cfg((n as u32, splits as u32, 1), FUSED_THREADS, 0)) }
            .ctx("fused_logprob_partial")?;
        let f = self.function("fused_logprob", "fused_logprob_finish", 0)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(logits_p)
            .arg(logits_r)
            .arg(targets)
            .arg(&part)
            .arg(out)
            .arg(&nn)
            .arg(&sp)
            .arg(&l)
            .arg(&cap);
        // SAFETY: as above; one warp per row, rows ≥ n return at once.
        unsafe { b.launch(warp_per_row(n)) }.ctx("fused_logprob_finish")?;
        Ok(())
    }

    /// Fill with `lo + (hi − lo)·u`, u uniform in [0, 1) hashed from
    /// `(seed, index)` — kernels/fill.cu (benchmark weights).
    pub fn fill_uniform(
        &self,
        out: &mut DevViewMut<'_>,
        seed: u64,
        lo: f32,
        hi: f32,
    ) -> Result<()> {
        let n = out.len as u64;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("fill", &typed("fill_uniform", out.dtype), 0)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut out.view).arg(&n).arg(&seed).arg(&lo).arg(&hi);
        let grid = n.div_ceil(THREADS as u64).min(1 << 16) as u32;
        // SAFETY: as in `embedding`.
        unsafe { b.launch(cfg((grid, 1, 1), THREADS, 0)) }.ctx("fill_uniform")?;
        Ok(())
    }

    /// `out[t, j] = Σ_k x[t, k] · w[j, k]` for `t < rows`, `j < n` (row-major
    /// `x [rows, k]`, `w [n, k]` as stored, `out [rows, ldo]` f32) through
    /// cuBLAS with f32 accumulation. `x` and `w` share one dtype: bf16/f16
    /// run on tensor cores, f32 in plain f32 (no TF32), so f32 checkpoints
    /// match the CPU backend to rounding. CPU twin: `cpu::gemm::matmul_wt`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_wt(
        &self,
        x: &DevView<'_>,                // [rows, k]
        w: &DevView<'_>,                // [n, k]
        out: &mut CudaViewMut<'_, f32>, // [rows, ldo]
        rows: usize,
        n: usize,
        k: usize,
        ldo: usize,
    ) -> Result<()> {
        let len = out.len();
        let (op, _ro) = out.device_ptr_mut(&self.stream);
        self.gemm(x, w, (op, len, DType::F32), rows, n, k, ldo)
    }

    /// [`Gpu::matmul_wt`] with the output in `out`'s dtype: f32, or the
    /// operands' 16-bit dtype (the f32 accumulator rounded once, as
    /// transformers rounds a projection in bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_wt_to(
        &self,
        x: &DevView<'_>,
        w: &DevView<'_>,
        out: &mut DevViewMut<'_>,
        rows: usize,
        n: usize,
        k: usize,
        ldo: usize,
    ) -> Result<()> {
        check(out.dtype == DType::F32 || out.dtype == x.dtype, || {
            format!(
                "gemm: a {} output of {} operands",
                out.dtype.name(),
                x.dtype.name()
            )
        })?;
        let (len, dt) = (out.len, out.dtype);
        let (op, _ro) = out.view.device_ptr_mut(&self.stream);
        self.gemm(x, w, (op, len, dt), rows, n, k, ldo)
    }

    /// The cuBLAS call behind both: `out` is (device pointer, elements, dtype).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &DevView<'_>,
        w: &DevView<'_>,
        out: (u64, usize, DType),
        rows: usize,
        n: usize,
        k: usize,
        ldo: usize,
    ) -> Result<()> {
        let (op, out_len, out_dt) = out;
        check(x.dtype == w.dtype, || {
            format!("gemm: x is {}, w is {}", x.dtype.name(), w.dtype.name())
        })?;
        check(x.len >= rows * k && w.len >= n * k && ldo >= n, || {
            format!(
                "gemm: x {} / w {} too small for [{rows}, {k}]·[{n}, {k}]ᵀ",
                x.len, w.len
            )
        })?;
        check(rows == 0 || out_len >= (rows - 1) * ldo + n, || {
            format!("gemm: out has {out_len} < {rows}×{ldo}")
        })?;
        dims_fit(&[rows, n, k, ldo])?;
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let cuda_type = |d: DType| match d {
            DType::F32 => cudaDataType::CUDA_R_32F,
            DType::BF16 => cudaDataType::CUDA_R_16BF,
            DType::F16 => cudaDataType::CUDA_R_16F,
        };
        let dt = cuda_type(x.dtype);
        let (alpha, beta) = (1.0f32, 0.0f32);
        self.ctx.bind_to_thread().ctx("bind context")?;
        let (xp, _rx) = x.view.device_ptr(&self.stream);
        let (wp, _rw) = w.view.device_ptr(&self.stream);
        // Column-major view: outᵀ [n, rows] = wᵀ… i.e. op(A) = Wᵀ-as-stored
        // (A = w, k×n col-major, transposed), B = xᵀ (k×rows col-major).
        // SAFETY: pointers are live device allocations with the sizes checked above.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                rows as i32,
                k as i32,
                (&alpha as *const f32).cast::<c_void>(),
                wp as *const c_void,
                dt,
                k as i32,
                xp as *const c_void,
                dt,
                k as i32,
                (&beta as *const f32).cast::<c_void>(),
                op as *mut c_void,
                cuda_type(out_dt),
                ldo as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .ctx("cublasGemmEx")
    }
}
