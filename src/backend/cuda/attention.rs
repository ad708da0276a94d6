//! The attention launcher (kernels/attention.cu, kernels/attention_wg.cu):
//! causal, optionally windowed attention over the paged KV pool with any
//! softmax scale, on tensor cores (mma.sync, one or two K/V stages; at
//! head_dim 512 two blocks per (tile, head), 256 output columns each; on
//! Hopper also wgmma, one warpgroup per block) or CUDA cores, with the key
//! range split over blocks when the (tile, head) blocks alone leave the GPU
//! idle. CPU twin: `ops::attention`.

use cudarc::driver::{CudaView, PushKernelArg};

use super::device::{CudaResultExt, DevView, DevViewMut, Gpu, cfg, choice_from_env};
use super::kernels::{ATTN_BR, KV_BLOCK, check, dims_fit, typed};
use crate::Result;
use crate::backend::cpu::ops::AttnShape;
use crate::model::weights::DType;

/// Keys per tile of the tensor-core attention kernel (from [`crate::consts`]).
const MMA_BC: usize = crate::consts::MMA_BC;
/// Head dims the tensor-core attention kernel is built for.
pub const MMA_HEAD_DIMS: [usize; 5] = [32, 64, 128, 256, 512];
/// The head dims `Auto` takes tensor cores for: those whose kernels have
/// passed parity on a GPU (docs/gpu-results.md). 256 and 512 (Qwen 3.5,
/// Gemma 4) are checked on the CPU emulator only; until a device run
/// checks them, `Auto` runs SIMT there where it fits (`TensorCore` forces
/// them).
pub const MMA_VERIFIED_HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Head dims of its double-buffered variant (at 512 two stages need 261 KB
/// of shared memory).
const PIPELINED_HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];
/// Head dims of the warpgroup (wgmma) kernel.
pub const WG_HEAD_DIMS: [usize; 2] = [64, 128];

/// Which attention kernel runs (kernels/attention.cu); a forward's choice
/// comes from `PADV_CUDA_ATTENTION` (`auto`, `simt`, `tensor-core`,
/// `pipelined`; unset: `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttnKernel {
    /// Tensor cores at the GPU-verified head dims where the cache dtype and
    /// device allow, else SIMT ([`Gpu::auto_attention`]).
    #[default]
    Auto,
    /// CUDA cores, f32 arithmetic throughout (every dtype, head_dim ≤ 512;
    /// at 512 its 192 KB of shared memory needs a Hopper-class opt-in).
    Simt,
    /// mma.sync (bf16/f16 caches, head_dim 32/64/128/256/512, sm_80+, where
    /// its shared memory fits: 99 KB at head_dim 256, 163 KB at 512).
    TensorCore,
    /// The tensor-core kernel with K/V tiles double-buffered through
    /// cp.async (the next tile in flight during this one's arithmetic), up to
    /// head_dim 256 (165 KB of shared memory there); not `Auto`'s choice
    /// until measured against `TensorCore` on a GPU.
    Pipelined,
    /// Hopper's warpgroup products (kernels/attention_wg.cu: wgmma, K/V
    /// double-buffered through cp.async; bf16/f16, head_dim 64/128, where
    /// the device loaded the sm_90a cubin and its wgmma products pass the
    /// probe, [`Gpu::wgmma_verified`]); checked on the CPU emulator, not yet
    /// on a GPU: never `Auto`'s choice until then.
    Warpgroup,
}
impl AttnKernel {
    /// `PADV_CUDA_ATTENTION`, or `Auto` when unset.
    pub fn from_env() -> Result<AttnKernel> {
        choice_from_env("PADV_CUDA_ATTENTION")
    }

    pub fn name(self) -> &'static str {
        match self {
            AttnKernel::Auto => "auto",
            AttnKernel::Simt => "simt",
            AttnKernel::TensorCore => "tensor-core",
            AttnKernel::Pipelined => "pipelined",
            AttnKernel::Warpgroup => "wgmma",
        }
    }
}

impl std::str::FromStr for AttnKernel {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<AttnKernel> {
        ALL_KERNELS
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                crate::Error::Backend(format!(
                    "PADV_CUDA_ATTENTION must be auto, simt, tensor-core, pipelined or wgmma, not `{s}`"
                ))
            })
    }
}

/// Every choice of [`AttnKernel`].
pub const ALL_KERNELS: [AttnKernel; 5] = [
    AttnKernel::Auto,
    AttnKernel::Simt,
    AttnKernel::TensorCore,
    AttnKernel::Pipelined,
    AttnKernel::Warpgroup,
];

/// Most key-range splits of the tensor-core attention kernel.
pub const MAX_KV_SPLITS: usize = 16;
/// Largest head_dim the attention kernels take (the SIMT kernel's 16 slots
/// of 32 lanes).
pub const MAX_HEAD_DIM: usize = 512;
/// Threads of the tensor-core attention kernel (`MMA_WARPS` · 32).
const MMA_THREADS: u32 = (crate::consts::MMA_WARPS * 32) as u32;
/// Threads of the SIMT attention kernel (`ATTN_WARPS` · 32).
const ATTN_THREADS: u32 = (crate::consts::ATTN_WARPS * 32) as u32;
/// Queries per half-tile of the SIMT attention kernel.
const SIMT_BR: usize = crate::consts::SIMT_BR;
/// Keys per tile of the SIMT attention kernel.
const ATTN_BC: usize = crate::consts::ATTN_BC;

/// Output columns per block of the tensor-core kernel: all of them up to
/// head_dim 256; at 512, 256 (O for 16 rows × 512 would not fit a warp's
/// registers), so `head_dim / mma_dv` blocks share a (tile, head).
fn mma_dv(hd: usize) -> usize {
    hd.min(256)
}

/// Dynamic shared memory of the tensor-core kernel with `stages` K/V
/// stages, bytes: per stage a K tile (MMA_BC × (hd + 8)) and a V tile
/// (MMA_BC × (dv + 8)), plus from head_dim 256 the Q tile (ATTN_BR × (hd +
/// 8)); 0 for one stage up to 128, whose tiles are static.
fn mma_smem(hd: usize, stages: usize, elem: usize) -> usize {
    let q_tile = hd > 128;
    if stages == 1 && !q_tile {
        return 0;
    }
    let kv = stages * MMA_BC * (hd + 8 + mma_dv(hd) + 8);
    (kv + if q_tile { ATTN_BR * (hd + 8) } else { 0 }) * elem
}

/// Dynamic shared memory of the warpgroup kernel, bytes: two stages of K
/// and V tiles, each hd / 64 regions of 64 rows × 128 bytes, plus 1 KB to
/// start them on a 1024-byte boundary (the swizzle atoms').
fn wg_smem(hd: usize) -> usize {
    2 * 2 * hd.div_ceil(64) * 64 * 128 + 1024
}

/// Dynamic shared memory of the SIMT kernel, bytes: the Q half-tile, the K
/// tile (rows padded by one float) and the V tile, f32.
fn simt_smem(hd: usize) -> usize {
    (SIMT_BR * hd + ATTN_BC * (hd + 1) + ATTN_BC * hd) * 4
}

impl Gpu {
    /// The kernel [`AttnKernel::Auto`] runs for this cache dtype and
    /// head_dim: tensor cores at the head dims verified on a GPU
    /// ([`MMA_VERIFIED_HEAD_DIMS`]), else SIMT where it fits, else tensor
    /// cores (head_dim 512 where the SIMT tile exceeds the shared memory).
    pub fn auto_attention(&self, dtype: DType, head_dim: usize) -> AttnKernel {
        let tc = self.attention_runs(AttnKernel::TensorCore, dtype, head_dim);
        if tc && MMA_VERIFIED_HEAD_DIMS.contains(&head_dim) {
            AttnKernel::TensorCore
        } else if self.attention_runs(AttnKernel::Simt, dtype, head_dim) || !tc {
            AttnKernel::Simt
        } else {
            AttnKernel::TensorCore
        }
    }

    /// Whether `kernel` takes this cache dtype and head_dim on this device:
    /// built for them (tensor cores: bf16/f16 on sm_80+, [`MMA_HEAD_DIMS`],
    /// up to 256 double-buffered; SIMT: up to [`MAX_HEAD_DIM`]) and its
    /// shared memory within what the device lets a block opt in to. `Auto`
    /// runs where tensor cores or SIMT do.
    pub fn attention_runs(&self, kernel: AttnKernel, dtype: DType, head_dim: usize) -> bool {
        let hd = head_dim;
        let fits = |bytes: usize| bytes <= self.shared_memory_optin() as usize;
        let mma = |stages, built: &[usize]| {
            dtype != DType::F32
                && built.contains(&hd)
                && self.arch().0 >= 8
                && fits(mma_smem(hd, stages, dtype.size()))
        };
        match kernel {
            AttnKernel::Simt => hd > 0 && hd <= MAX_HEAD_DIM && fits(simt_smem(hd)),
            AttnKernel::TensorCore => mma(1, &MMA_HEAD_DIMS),
            AttnKernel::Pipelined => mma(2, &PIPELINED_HEAD_DIMS),
            AttnKernel::Warpgroup => {
                dtype != DType::F32
                    && WG_HEAD_DIMS.contains(&hd)
                    && fits(wg_smem(hd))
                    && self.wgmma_verified()
            }
            AttnKernel::Auto => self.attention_runs(self.auto_attention(dtype, hd), dtype, hd),
        }
    }

    /// Causal (optionally windowed) attention over the paged KV pool —
    /// kernels/attention.cu; CPU twin: `ops::attention`. `tiles` lists
    /// `(sequence, first query)` pairs, [`super::kernels::ATTN_BR`] queries each; sequence
    /// `s`'s packed queries sit at positions `past[s]…` (its first `past[s]`
    /// keys are cached, already in the pool); see
    /// [`super::forward::PagedBatch`] for how they are built.
    /// `kernel`: [`AttnKernel::Auto`] picks tensor cores where they apply
    /// (tests and benches force each); a kernel that does not run here
    /// ([`Gpu::attention_runs`]) is an error. Scores are scaled by
    /// `shape.scale`.
    /// `splits`: key-range splits of the tensor-core kernel (0: as many as
    /// fill the GPU, up to [`MAX_KV_SPLITS`]; the SIMT kernel never splits).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        kernel: AttnKernel,
        q: &DevView<'_>,                 // [n, heads·hd], the pools' dtype
        k_pool: &DevView<'_>,            // [pool_rows, kv_heads·hd]
        v_pool: &DevView<'_>,            // [pool_rows, kv_heads·hd]
        block_table: &CudaView<'_, i32>, // [num_seqs, max_blocks]
        seq_start: &CudaView<'_, i32>,   // [num_seqs + 1]
        past: &CudaView<'_, i32>,        // [num_seqs]
        tiles: &CudaView<'_, i32>,       // [num_tiles, 2]
        max_blocks: usize,
        out: &mut DevViewMut<'_>, // [n, heads·hd]
        shape: AttnShape,
        splits: usize,
    ) -> Result<()> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            window,
            scale,
        } = shape;
        check(scale.is_finite(), || {
            format!("attention: softmax scale {scale}")
        })?;
        check(
            hd > 0 && hd <= MAX_HEAD_DIM && nkv > 0 && nh.is_multiple_of(nkv),
            || format!("attention: unsupported geometry {shape:?} (head_dim ≤ {MAX_HEAD_DIM})"),
        )?;
        let (qd, kvd) = (nh * hd, nkv * hd);
        check(q.len.is_multiple_of(qd) && out.len == q.len, || {
            format!("attention: q {} / out {} not [n, {qd}]", q.len, out.len)
        })?;
        check(
            k_pool.dtype == v_pool.dtype
                && k_pool.dtype == out.dtype
                && k_pool.dtype == q.dtype
                && k_pool.len == v_pool.len
                && k_pool.len.is_multiple_of(kvd * KV_BLOCK),
            || "attention: q / k/v pools / out dtypes or sizes disagree".into(),
        )?;
        let num_seqs = seq_start.len().saturating_sub(1);
        check(block_table.len() == num_seqs * max_blocks, || {
            format!(
                "attention: block table has {} != {num_seqs}×{max_blocks}",
                block_table.len()
            )
        })?;
        check(tiles.len().is_multiple_of(2), || {
            "attention: tiles not [n, 2]".into()
        })?;
        check(past.len() == num_seqs, || {
            format!("attention: past has {} != {num_seqs} sequences", past.len())
        })?;
        let num_tiles = tiles.len() / 2;
        let win = window.unwrap_or(0);
        dims_fit(&[num_tiles, nh, max_blocks, win, q.len])?;
        if num_tiles == 0 {
            return Ok(());
        }
        let kernel = match kernel {
            AttnKernel::Auto => self.auto_attention(k_pool.dtype, hd),
            k => k,
        };
        let stages = if kernel == AttnKernel::Pipelined {
            2
        } else {
            1
        };
        let tc = kernel != AttnKernel::Simt;
        check(self.attention_runs(kernel, k_pool.dtype, hd), || {
            format!(
                "attention: no {kernel:?} kernel for {} head_dim {hd} on sm_{}{} (tensor cores: \
                 bf16/f16, head_dim {MMA_HEAD_DIMS:?}, double-buffered {PIPELINED_HEAD_DIMS:?}, \
                 sm_80+; wgmma: head_dim {WG_HEAD_DIMS:?}, where the sm_90a cubin is loaded ({}) and \
                 its products pass the probe ({})); it needs \
                 {} bytes of shared memory, the device allows {}",
                k_pool.dtype.name(),
                self.arch().0,
                self.arch().1,
                self.has_wgmma(),
                self.wgmma_verified(),
                match kernel {
                    AttnKernel::Simt => simt_smem(hd),
                    AttnKernel::Warpgroup => wg_smem(hd),
                    _ => mma_smem(hd, stages, k_pool.dtype.size()),
                },
                self.shared_memory_optin()
            )
        })?;
        // Tensor-core blocks per (tile, head), each writing hd / parts columns.
        let parts = if tc { hd / mma_dv(hd) } else { 1 };
        let (h, kh, d, mb, w) = (
            nh as i32,
            nkv as i32,
            hd as i32,
            max_blocks as i32,
            win as i32,
        );
        // Tensor cores split the key range when the (tile, head) blocks
        // alone leave multiprocessors idle, each split keeping at least 4 key
        // tiles (256 keys) of the longest sequence; SIMT never splits.
        let splits = match (tc, splits) {
            (false, _) => 1,
            (true, 0) => {
                let blocks = num_tiles * nh * parts;
                let want = (2 * self.multiprocessors() as usize).div_ceil(blocks.max(1));
                want.min((max_blocks * KV_BLOCK / 256).max(1))
                    .clamp(1, MAX_KV_SPLITS)
            }
            (true, s) => s.min(MAX_KV_SPLITS),
        };
        let (module, name, threads, smem) = if kernel == AttnKernel::Warpgroup {
            let name = format!("paged_attention_wg_{}_d{hd}", k_pool.dtype.name());
            ("attention_wg", name, MMA_THREADS, wg_smem(hd) as u32)
        } else if tc {
            let prefix = if stages == 2 {
                "paged_attention_mma2"
            } else {
                "paged_attention_mma"
            };
            let name = format!("{prefix}_{}_d{hd}", k_pool.dtype.name());
            let smem = mma_smem(hd, stages, k_pool.dtype.size()) as u32;
            ("attention", name, MMA_THREADS, smem)
        } else {
            // Registers per row: ceil(hd / 32) rounded up to an instantiated 1, 2, 4, 8 or 16.
            let slots = hd.div_ceil(32).next_power_of_two();
            let name = format!("paged_attention_{}_s{slots}", k_pool.dtype.name());
            let smem = simt_smem(hd) as u32;
            ("attention", name, ATTN_THREADS, smem)
        };
        let n = q.len / qd;
        let mut part = self.alloc_f32(if splits > 1 {
            n * nh * splits * (hd + 2)
        } else {
            1
        })?;
        let f = self.function(module, &name, smem)?;
        let sp = splits as i32;
        {
            // Both kernels take the same leading arguments; the tensor-core
            // one also the split partials and their count.
            let mut b = self.stream.launch_builder(&f);
            b.arg(&q.view)
                .arg(&k_pool.view)
                .arg(&v_pool.view)
                .arg(block_table)
                .arg(seq_start)
                .arg(past)
                .arg(tiles)
                .arg(&mut out.view)
                .arg(&h)
                .arg(&kh)
                .arg(&d)
                .arg(&mb)
                .arg(&w)
                .arg(&scale);
            if tc {
                b.arg(&mut part).arg(&sp);
            }
            let grid = (num_tiles as u32, (nh * parts) as u32, splits as u32);
            // SAFETY: as in `embedding`; block-table entries and tiles come
            // from `PagedBatch`, which keeps them inside the pool and the
            // sequences; with splits > 1 `part` holds n × heads × splits
            // partials of hd + 2 floats, written for every packed row
            // (every row lies in exactly one tile; each of the `parts`
            // blocks of a (tile, head) writes its hd / parts columns).
            unsafe { b.launch(cfg(grid, threads, smem)) }.ctx(&name)?;
        }
        if splits > 1 {
            let name = typed("attention_merge", k_pool.dtype);
            let f = self.function("attention", &name, 0)?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&part).arg(&mut out.view).arg(&h).arg(&d).arg(&sp);
            // SAFETY: `part` was fully written above; out is [n, heads·hd].
            unsafe { b.launch(cfg((n as u32, nh as u32, 1), hd as u32, 0)) }.ctx(&name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_choices_parse_by_name_and_refuse_others_by_name() {
        for k in ALL_KERNELS {
            assert_eq!(k.name().parse::<AttnKernel>().unwrap(), k);
        }
        let e = "mma".parse::<AttnKernel>().unwrap_err().to_string();
        assert!(
            e.contains("PADV_CUDA_ATTENTION") && e.contains("`mma`"),
            "{e}"
        );
    }
}
