//! The gated delta rule in 64-token chunks on the GPU (kernels/delta_chunk.cu):
//! [`DeltaRulePath`] chooses it or the token-by-token recurrence
//! (`gated_delta_rule` in kernels/deltanet.cu); [`DeltaChunks`] holds a
//! wave's chunk table ([`crate::backend::plan::delta_rule_chunks`]) and the
//! per-row products the two kernels exchange. [`Gpu::gated_delta_rule`]
//! checks the buffers of both forms and calls `Gpu::delta_chunk_launch`
//! for this one.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::deltanet::{RecurrenceLayout, push_state_args, rule_dims};
use super::device::{CudaResultExt, Gpu, cfg, choice_from_env};
use super::kernels::{check, dims_fit};
use crate::Result;
use crate::backend::plan::delta_rule_chunks;
use crate::consts::DN_CHUNK;
use crate::model::config::DeltaNetDesc;

/// Which form of the gated delta rule a forward runs (`PADV_CUDA_DELTA_RULE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeltaRulePath {
    /// The measured one: token by token, until the chunked form has run on
    /// a GPU (docs/gpu-results.md).
    #[default]
    Auto,
    /// Token by token (`gated_delta_rule`): one barrier per token, a serial
    /// chain of dot products and shuffles per token.
    Recurrent,
    /// In chunks (`delta_chunk_prep` + `delta_chunk_state`): the chunks'
    /// products all at once, then a walk over chunks.
    Chunked,
}

impl DeltaRulePath {
    /// `PADV_CUDA_DELTA_RULE` (`auto`, `recurrent` or `chunked`); unset is
    /// `auto`.
    pub fn from_env() -> Result<DeltaRulePath> {
        choice_from_env("PADV_CUDA_DELTA_RULE")
    }

    pub fn name(self) -> &'static str {
        match self {
            DeltaRulePath::Auto => "auto",
            DeltaRulePath::Recurrent => "recurrent",
            DeltaRulePath::Chunked => "chunked",
        }
    }

    /// Whether this choice runs the chunked kernels.
    pub fn chunked(self) -> bool {
        self == DeltaRulePath::Chunked
    }
}

impl std::str::FromStr for DeltaRulePath {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<DeltaRulePath> {
        match s.trim() {
            "auto" => Ok(DeltaRulePath::Auto),
            "recurrent" => Ok(DeltaRulePath::Recurrent),
            "chunked" => Ok(DeltaRulePath::Chunked),
            other => Err(crate::Error::Backend(format!(
                "PADV_CUDA_DELTA_RULE must be auto, recurrent or chunked, not `{other}`"
            ))),
        }
    }
}

/// Threads of `delta_chunk_prep` (its 16 × 16 tiles of 4 × 4 pairs).
const PREP_THREADS: u32 = 256;

/// A wave's chunks and the buffers between the chunked form's two kernels.
pub struct DeltaChunks {
    /// `[chunks + 1]`: each chunk's first packed row, then the last's end.
    chunk_start: CudaSlice<i32>,
    /// `[seqs + 1]`: each sequence's first chunk, then the chunk count.
    seq_chunk: CudaSlice<i32>,
    chunks: usize,
    seqs: usize,
    /// Packed rows, and the (value heads, dk, dv) the buffers are for.
    rows: usize,
    heads: (usize, usize, usize),
    /// `[t, vh, dk + dv]`: W | U of each row's chunk.
    wu: CudaSlice<f32>,
    /// `[t, vh, DN_CHUNK]`: each row's row of P.
    pm: CudaSlice<f32>,
    /// `[t, vh]`: cumulative log-decays within the chunk.
    cum: CudaSlice<f32>,
}

impl DeltaChunks {
    /// For packed sequences `seq_start` (`[seqs + 1]`, host), sequence `s`
    /// after `past[s]` cached tokens, with a chunk ending after every row
    /// in `cut_after` (the rows whose states the cache keeps).
    pub fn new(
        gpu: &Gpu,
        d: &DeltaNetDesc,
        seq_start: &[i32],
        past: &[i32],
        cut_after: &[usize],
    ) -> Result<DeltaChunks> {
        check(seq_start.len() == past.len() + 1, || {
            format!(
                "delta chunks: {} sequence starts for {} sequences",
                seq_start.len(),
                past.len()
            )
        })?;
        let t = seq_start.last().map_or(0, |&e| e as usize);
        let vh = d.num_v_heads;
        let (starts, seq_chunk) = delta_rule_chunks(seq_start, past, cut_after);
        Ok(DeltaChunks {
            chunks: starts.len() - 1,
            seqs: past.len(),
            rows: t,
            heads: (vh, d.k_head_dim, d.v_head_dim),
            chunk_start: gpu.upload(&starts)?,
            seq_chunk: gpu.upload(&seq_chunk)?,
            wu: gpu.alloc_f32(t * vh * (d.k_head_dim + d.v_head_dim))?,
            pm: gpu.alloc_f32(t * vh * DN_CHUNK)?,
            cum: gpu.alloc_f32(t * vh)?,
        })
    }

    pub(super) fn seqs(&self) -> usize {
        self.seqs
    }
}

/// Shared memory of `delta_chunk_prep` and `delta_chunk_state` (bytes):
/// the layouts their launch comments in kernels/delta_chunk.cu give.
fn smem_bytes(dk: usize, layout: &RecurrenceLayout) -> (u32, u32) {
    let ch = DN_CHUNK;
    let prep = 2 * ch * (dk + 4) + ch * (ch + 1) + 2 * ch;
    let p = dk / layout.rpt;
    let state = ch * (dk + 4 * p) + ch * ch + layout.cols * (ch + p) + ch;
    ((prep * 4) as u32, (state * 4) as u32)
}

impl Gpu {
    /// The chunked form's launches, for [`Gpu::gated_delta_rule`] (which
    /// checked every buffer but the chunk table's against the layer and
    /// `seq_start`): the chunk table must describe the same sequences.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn delta_chunk_launch(
        &self,
        mixed: &CudaView<'_, f32>,
        (g, beta): (&CudaView<'_, f32>, &CudaView<'_, f32>),
        chunks: &mut DeltaChunks,
        init: Option<&CudaView<'_, f32>>,
        final_state: Option<&mut CudaViewMut<'_, f32>>,
        (at, slots): (
            Option<&CudaView<'_, i32>>,
            Option<&mut CudaViewMut<'_, f32>>,
        ),
        out: &mut CudaViewMut<'_, f32>,
        d: &DeltaNetDesc,
        layout: &RecurrenceLayout,
    ) -> Result<()> {
        let (cd, vh, dk, dv) = (d.conv_dim(), d.num_v_heads, d.k_head_dim, d.v_head_dim);
        let n = mixed.len() / cd.max(1);
        check(chunks.rows == n && chunks.heads == (vh, dk, dv), || {
            format!(
                "delta chunks: planned for {} rows of heads {:?}, not {n} of {:?}",
                chunks.rows,
                chunks.heads,
                (vh, dk, dv)
            )
        })?;
        // The kernels read rows 16 bytes at a time.
        check(dk.is_multiple_of(4) && dv.is_multiple_of(4), || {
            format!("delta chunks: heads of {dk} × {dv} are not multiples of 4")
        })?;
        dims_fit(&[chunks.wu.len(), chunks.pm.len()])?;
        let (prep_smem, state_smem) = smem_bytes(dk, layout);
        let dims = rule_dims(d, layout.cols);
        if chunks.chunks > 0 {
            let f = self.function("delta_chunk", "delta_chunk_prep", prep_smem)?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(mixed).arg(g).arg(beta).arg(&chunks.chunk_start);
            b.arg(&mut chunks.wu)
                .arg(&mut chunks.pm)
                .arg(&mut chunks.cum);
            for x in &dims[..5] {
                b.arg(x);
            }
            // SAFETY: the caller checked mixed, g and beta for n rows; the
            // chunk table covers rows [0, n) (delta_rule_chunks over the
            // same sequences) and wu / pm / cum hold n rows (checked above).
            let grid = (chunks.chunks as u32, vh as u32, 1);
            unsafe { b.launch(cfg(grid, PREP_THREADS, prep_smem)) }.ctx("delta_chunk_prep")?;
        }
        let name = format!("delta_chunk_state_r{}", layout.rpt);
        let f = self.function("delta_chunk", &name, state_smem)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(mixed)
            .arg(&chunks.wu)
            .arg(&chunks.pm)
            .arg(&chunks.cum);
        b.arg(&chunks.chunk_start).arg(&chunks.seq_chunk);
        push_state_args(&mut b, (init, final_state), (at, slots), out, &dims);
        // SAFETY: as above; one block per (sequence, value head, `cols`
        // columns) with the recurrence's layout, which the caller checked.
        let grid = (chunks.seqs as u32, vh as u32, layout.splits as u32);
        unsafe { b.launch(cfg(grid, layout.threads as u32, state_smem)) }
            .ctx("delta_chunk_state")?;
        Ok(())
    }
}
