//! Launchers for kernels/deltanet.cu, the gated-DeltaNet mixer's steps
//! between its input GEMMs and its output GEMM (Qwen 3.5's `linear_attn`);
//! CPU twin: `cpu::deltanet` (and `cpu::delta_rule::recurrent` for the
//! recurrence). Each checks its buffers against the layer's
//! [`DeltaNetDesc`] and the packed batch before launching.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchArgs, PushKernelArg};

use super::delta_chunk::{DeltaChunks, DeltaRulePath};
use super::device::{CudaResultExt, DevTensor, DevView, DevViewMut, Gpu, cfg, sub_mut};
use super::forward::{DeviceBatch, PagedBatch};
use super::kernels::{ArgOrNull, check, dims_fit, typed};
use super::kv::{RowCopies, WaveCopies};
use super::weights::DeviceDeltaNet;
use crate::Result;
use crate::consts::{DN_MAX_THREADS, DN_PREFETCH};
use crate::model::config::DeltaNetDesc;
use crate::model::weights::DType;

/// How `gated_delta_rule` lays out key heads of `dk` and value heads of
/// `dv` ([`recurrence_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecurrenceLayout {
    /// State rows per thread (the entry points are built for 8, 16 and 32;
    /// the `dk / rpt` threads of a column are adjacent lanes, a power of two
    /// within a warp).
    pub rpt: usize,
    /// Value columns per block, and blocks per (sequence, value head).
    pub cols: usize,
    pub splits: usize,
    pub threads: usize,
}

/// Fewest threads a split of a head's columns leaves a block: columns
/// evolve independently, so a head is split over blocks (more of the GPU
/// busy, fewer warps behind each token's barrier) down to this size.
const DN_MIN_THREADS: usize = 128;

/// The layout of `gated_delta_rule` for these head sizes, or `None` when
/// the kernel does not take them.
pub(crate) fn recurrence_layout(dk: usize, dv: usize) -> Option<RecurrenceLayout> {
    let rpt = [32, 16, 8]
        .into_iter()
        .find(|&r| dk.is_multiple_of(r) && (dk / r).is_power_of_two() && dk / r <= 32)?;
    let p = dk / rpt;
    let mut splits = 1;
    while dv.is_multiple_of(2 * splits) && dv / (2 * splits) * p >= DN_MIN_THREADS {
        splits *= 2;
    }
    let cols = dv / splits;
    let threads = (cols * p).next_multiple_of(32);
    (dv > 0 && threads <= DN_MAX_THREADS).then_some(RecurrenceLayout {
        rpt,
        cols,
        splits,
        threads,
    })
}

impl Gpu {
    /// Causal depthwise convolution + SiLU over each packed sequence:
    /// `out[r] = silu(Σ_j w_t[j] · x[r − (K−1) + j])`, rows before a
    /// sequence's first from its `tails` entry (`[seqs, K − 1, cd]`, the
    /// cached prefix's last input rows) or zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn deltanet_conv(
        &self,
        x: &CudaView<'_, f32>,             // [n, cd]
        w_t: &CudaView<'_, f32>,           // [K, cd]
        tails: Option<&CudaView<'_, f32>>, // [seqs, K − 1, cd]
        seq_start: &CudaView<'_, i32>,     // [seqs + 1]
        row_seq: &CudaView<'_, i32>,       // [n]
        out: &mut CudaViewMut<'_, f32>,    // [n, cd]
        d: &DeltaNetDesc,
    ) -> Result<()> {
        let (cd, k) = (d.conv_dim(), d.conv_kernel);
        let n = row_seq.len();
        let seqs = seq_start.len().saturating_sub(1);
        check(k >= 1 && w_t.len() == k * cd, || {
            format!("deltanet_conv: weight of {} is not [{k}, {cd}]", w_t.len())
        })?;
        check(x.len() == n * cd && out.len() == n * cd, || {
            format!(
                "deltanet_conv: x {} / out {} for {n}×{cd}",
                x.len(),
                out.len()
            )
        })?;
        if let Some(t) = tails {
            check(t.len() == seqs * (k - 1) * cd, || {
                format!("deltanet_conv: tails of {} for {seqs} sequences", t.len())
            })?;
        }
        dims_fit(&[n, cd, n * cd])?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("deltanet", "deltanet_conv", 0)?;
        let (c, kk) = (cd as i32, k as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(w_t).arg_or_null(tails).arg(seq_start);
        b.arg(row_seq).arg(out).arg(&c).arg(&kk);
        // SAFETY: shapes checked above; `row_seq` values index `seq_start`
        // and every row lies inside its sequence (built by the host planner).
        let grid = (n as u32, cd.div_ceil(256) as u32, 1);
        unsafe { b.launch(cfg(grid, 256, 0)) }.ctx("deltanet_conv")?;
        Ok(())
    }

    /// In place: q and k L2-normalised per key head (q also by 1/√dk),
    /// `b` → β = sigmoid(b), `a` → g = −exp(A_log)·softplus(a + dt_bias).
    pub fn deltanet_prep(
        &self,
        mixed: &mut CudaViewMut<'_, f32>, // [n, cd]
        b: &mut CudaViewMut<'_, f32>,     // [n, vh]
        a: &mut CudaViewMut<'_, f32>,     // [n, vh]
        (a_log, dt_bias): (&CudaView<'_, f32>, &CudaView<'_, f32>), // [vh] each
        d: &DeltaNetDesc,
    ) -> Result<()> {
        let (cd, vh) = (d.conv_dim(), d.num_v_heads);
        let n = mixed.len() / cd.max(1);
        check(
            mixed.len() == n * cd && b.len() == n * vh && a.len() == n * vh,
            || {
                format!(
                    "deltanet_prep: mixed {} / b {} / a {} for {n} rows",
                    mixed.len(),
                    b.len(),
                    a.len()
                )
            },
        )?;
        check(a_log.len() == vh && dt_bias.len() == vh, || {
            "deltanet_prep: A_log / dt_bias are not [v_heads]".into()
        })?;
        dims_fit(&[n, cd])?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("deltanet", "deltanet_prep", 0)?;
        let (c, kh, v, dk) = (
            cd as i32,
            d.num_k_heads as i32,
            vh as i32,
            d.k_head_dim as i32,
        );
        let q_scale = (d.k_head_dim as f64).powf(-0.5) as f32;
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(mixed).arg(b).arg(a).arg(a_log).arg(dt_bias);
        bl.arg(&c).arg(&kh).arg(&v).arg(&dk).arg(&q_scale);
        // SAFETY: shapes checked above; one block per row.
        unsafe { bl.launch(cfg((n as u32, 1, 1), 128, 0)) }.ctx("deltanet_prep")?;
        Ok(())
    }

    /// The gated delta rule per (sequence, value head), token by token,
    /// or with `chunks` in 64-token chunks ([`DeltaChunks`], planned for
    /// these sequences with a cut after every snapshot row), from `init`
    /// (`[seqs, vh, dk, dv]`) or zeros; the states after each sequence's
    /// last token into `final_state`, and after row `r` into slot `at[r]`
    /// of `snapshots` (`(at [n], slots [_, vh, dk, dv])`, −1 for none; the
    /// caller builds `at` from slots it checked); `out` `[n, vh·dv]`.
    #[allow(clippy::too_many_arguments)]
    pub fn gated_delta_rule(
        &self,
        mixed: &CudaView<'_, f32>, // [n, cd]: q | k | v (after deltanet_prep)
        (g, beta): (&CudaView<'_, f32>, &CudaView<'_, f32>), // [n, vh] each
        seq_start: &CudaView<'_, i32>, // [seqs + 1]
        chunks: Option<&mut DeltaChunks>,
        init: Option<&CudaView<'_, f32>>,
        final_state: Option<&mut CudaViewMut<'_, f32>>,
        snapshots: Option<(&CudaView<'_, i32>, &mut CudaViewMut<'_, f32>)>,
        out: &mut CudaViewMut<'_, f32>, // [n, vh·dv]
        d: &DeltaNetDesc,
    ) -> Result<()> {
        let (cd, vh, dk, dv) = (d.conv_dim(), d.num_v_heads, d.k_head_dim, d.v_head_dim);
        let n = mixed.len() / cd.max(1);
        let seqs = seq_start.len().saturating_sub(1);
        let layout = recurrence_layout(dk, dv).ok_or_else(|| {
            crate::Error::Backend(format!(
                "cuda: gated_delta_rule does not take key × value heads of {dk} × {dv}"
            ))
        })?;
        check(
            d.num_k_heads > 0 && vh.is_multiple_of(d.num_k_heads),
            || {
                format!(
                    "gated_delta_rule: heads {vh}/{} × dv {dv} do not fit a block",
                    d.num_k_heads
                )
            },
        )?;
        check(
            mixed.len() == n * cd
                && g.len() == n * vh
                && beta.len() == n * vh
                && out.len() == n * vh * dv,
            || format!("gated_delta_rule: buffers for {n} rows"),
        )?;
        let state = seqs * vh * dk * dv;
        check(
            init.is_none_or(|s| s.len() == state)
                && final_state.as_ref().is_none_or(|s| s.len() == state),
            || format!("gated_delta_rule: states are not [{seqs}, {vh}, {dk}, {dv}]"),
        )?;
        let per = vh * dk * dv;
        check(
            snapshots
                .as_ref()
                .is_none_or(|(at, slots)| at.len() == n && slots.len().is_multiple_of(per)),
            || format!("gated_delta_rule: snapshot rows for {n} rows or slots of {per}"),
        )?;
        dims_fit(&[n * cd, state])?;
        if seqs == 0 {
            return Ok(());
        }
        let (at, slots) = snapshots.unzip();
        if let Some(chunks) = chunks {
            check(chunks.seqs() == seqs, || {
                format!(
                    "gated_delta_rule: chunks planned for {} sequences, not {seqs}",
                    chunks.seqs()
                )
            })?;
            return self.delta_chunk_launch(
                mixed,
                (g, beta),
                chunks,
                init,
                final_state,
                (at, slots),
                out,
                d,
                &layout,
            );
        }
        let RecurrenceLayout {
            rpt,
            cols,
            splits,
            threads,
        } = layout;
        // Two stages of [q | k (each padded by dk / rpt) | v | g | β]
        // (DN_STAGE); each thread prefetches at most DN_PREFETCH of a
        // token's 2·dk + dv + 2 values.
        check((2 * dk + dv + 2) <= DN_PREFETCH * threads, || {
            format!("gated_delta_rule: {threads} threads cannot stage heads of {dk} × {dv}")
        })?;
        let smem = (2 * (2 * (dk + dk / rpt) + dv + 2) * 4) as u32;
        let f = self.function("deltanet", &format!("gated_delta_rule_r{rpt}"), smem)?;
        let dims = rule_dims(d, cols);
        let mut b = self.stream.launch_builder(&f);
        b.arg(mixed).arg(g).arg(beta).arg(seq_start);
        push_state_args(&mut b, (init, final_state), (at, slots), out, &dims);
        // SAFETY: shapes checked above; one block per (sequence, value
        // head, `cols` columns), `threads` covers cols × dk / rpt row parts.
        let grid = (seqs as u32, vh as u32, splits as u32);
        unsafe { b.launch(cfg(grid, threads as u32, smem)) }.ctx("gated_delta_rule")?;
        Ok(())
    }

    /// `out = rms_norm(o)·w · silu(z)` per value head, in `out`'s dtype.
    pub fn gated_rmsnorm_silu(
        &self,
        o: &CudaView<'_, f32>,    // [n, vh·dv]
        z: &CudaView<'_, f32>,    // [n, vh·dv]
        w: &CudaView<'_, f32>,    // [dv]
        out: &mut DevViewMut<'_>, // [n, vh·dv]
        d: &DeltaNetDesc,
        eps: f32,
    ) -> Result<()> {
        let (vh, dv) = (d.num_v_heads, d.v_head_dim);
        let vd = vh * dv;
        let n = o.len() / vd.max(1);
        check(
            o.len() == n * vd && z.len() == n * vd && out.len >= n * vd && w.len() == dv,
            || {
                format!(
                    "gated_rmsnorm_silu: buffers for {n}×{vd} (weight {})",
                    w.len()
                )
            },
        )?;
        dims_fit(&[n, vd])?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("deltanet", &typed("gated_rmsnorm_silu", out.dtype), 0)?;
        let (v, dd) = (vh as i32, dv as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(o)
            .arg(z)
            .arg(w)
            .arg(&mut out.view)
            .arg(&v)
            .arg(&dd)
            .arg(&eps);
        // SAFETY: shapes checked above; one warp per (row, value head).
        let grid = (n as u32, vh.div_ceil(8) as u32, 1);
        unsafe { b.launch(cfg(grid, 256, 0)) }.ctx("gated_rmsnorm_silu")?;
        Ok(())
    }
}

/// The integer arguments both forms of the delta rule's kernels end with:
/// conv_dim, key heads, value heads, dk, dv and the columns per block.
pub(super) fn rule_dims(d: &DeltaNetDesc, cols: usize) -> [i32; 6] {
    [
        d.conv_dim(),
        d.num_k_heads,
        d.num_v_heads,
        d.k_head_dim,
        d.v_head_dim,
        cols,
    ]
    .map(|x| x as i32)
}

/// The arguments both forms' state kernels end with: the initial and final
/// states, the snapshot rows and slots (null when absent), the output and
/// [`rule_dims`].
pub(super) fn push_state_args<'a>(
    b: &mut LaunchArgs<'a>,
    (init, final_state): (
        Option<&'a CudaView<'_, f32>>,
        Option<&'a mut CudaViewMut<'_, f32>>,
    ),
    (at, slots): (
        Option<&'a CudaView<'_, i32>>,
        Option<&'a mut CudaViewMut<'_, f32>>,
    ),
    out: &'a mut CudaViewMut<'_, f32>,
    dims: &'a [i32; 6],
) {
    b.arg_or_null(init)
        .arg_or_null(final_state)
        .arg_or_null(at)
        .arg_or_null(slots)
        .arg(out);
    for x in dims {
        b.arg(x);
    }
}

/// What a wave's DeltaNet layers exchange with the prefix cache
/// ([`super::kv::DeviceKv`]'s recurrent stores).
pub struct RecurrentCopies {
    /// `(cache block, sequence)`: each sequence with a hit starts from its
    /// last cached block's state and convolution tail.
    starts: RowCopies,
    /// `[t]`: the cache block whose snapshot is taken after the row, or −1.
    snap_at: CudaSlice<i32>,
    /// `(packed row, tail row)`: the last `K − 1` input rows of each filled
    /// block into its convolution tail.
    tails: RowCopies,
    /// The packed rows `snap_at` names (the chunked form ends a chunk after
    /// each).
    snap_rows: Vec<usize>,
}

impl RecurrentCopies {
    /// From the wave's hits and filled blocks ([`WaveCopies`]' `starts`
    /// and `ends`), for a convolution of `k` taps over `t` packed rows and
    /// a cache of `capacity` blocks.
    pub fn new(
        gpu: &Gpu,
        copies: &WaveCopies,
        k: usize,
        t: usize,
        capacity: usize,
    ) -> Result<RecurrentCopies> {
        let (starts, ends) = (&copies.starts, &copies.ends);
        check(
            k >= 1 && (ends.iter()).all(|&(row, id)| row < t && row + 2 >= k && id < capacity),
            || "deltanet: a filled block outside the wave or the cache".into(),
        )?;
        let mut snap_at = vec![-1i32; t];
        let mut tails = Vec::with_capacity(ends.len() * (k - 1));
        for &(row, id) in ends {
            snap_at[row] = id as i32;
            let first = row + 2 - k;
            tails.extend((0..k - 1).map(|i| (first + i, id * (k - 1) + i)));
        }
        Ok(RecurrentCopies {
            snap_rows: ends.iter().map(|&(row, _)| row).collect(),
            starts: RowCopies::upload(gpu, starts.clone())?,
            snap_at: gpu.upload(&snap_at)?,
            tails: RowCopies::upload(gpu, tails)?,
        })
    }
}

/// The buffers of a forward's DeltaNet layers, over every packed row (the
/// convolution and the recurrence run along whole sequences).
pub struct DeltaNetScratch {
    /// `[t, conv_dim]` f32: `in_proj_qkv`'s output (the convolution's
    /// input, whose last rows a filled block keeps).
    x: DevTensor,
    /// `[t, value_dim]`, `[t, v_heads]` ×2: `in_proj_z`, `_b`, `_a`.
    z: CudaSlice<f32>,
    b: CudaSlice<f32>,
    a: CudaSlice<f32>,
    /// `[t, conv_dim]`: after the convolution and norms.
    mixed: CudaSlice<f32>,
    /// `[t, value_dim]`: the recurrence's output.
    o: CudaSlice<f32>,
    /// `[t]`: each row's sequence.
    row_seq: CudaSlice<i32>,
    /// With the prefix cache: `[seqs, K − 1, conv_dim]` and `[seqs, vh, dk,
    /// dv]`, zeros but where a sequence continues a cached prefix.
    tails: DevTensor,
    init: DevTensor,
    cache: Option<RecurrentCopies>,
    /// With the chunked form ([`DeltaRulePath::Chunked`]): the wave's chunks.
    chunks: Option<DeltaChunks>,
}

impl DeltaNetScratch {
    /// Buffers for `layout`'s rows; with `cache` (a prefix cache's wave),
    /// its sequences may start after cached blocks; the delta rule in the
    /// form `path` says.
    pub fn new(
        gpu: &Gpu,
        d: &DeltaNetDesc,
        layout: &PagedBatch,
        cache: Option<RecurrentCopies>,
        path: DeltaRulePath,
    ) -> Result<DeltaNetScratch> {
        check(
            cache.is_some() || layout.past.iter().all(|&p| p == 0),
            || "deltanet: a cached prefix without the cache's states".into(),
        )?;
        let t = layout.tokens();
        let seqs = layout.past.len();
        let (cd, vd, vh) = (d.conv_dim(), d.value_dim(), d.num_v_heads);
        let row_seq: Vec<i32> = (layout.seq_start.windows(2).enumerate())
            .flat_map(|(s, w)| std::iter::repeat_n(s as i32, (w[1] - w[0]) as usize))
            .collect();
        let (tail_len, state_len) = match cache {
            Some(_) => (
                seqs * (d.conv_kernel - 1) * cd,
                seqs * vh * d.k_head_dim * d.v_head_dim,
            ),
            None => (0, 0),
        };
        let cuts = cache.as_ref().map_or(&[][..], |c| &c.snap_rows[..]);
        let chunks = (path.chunked())
            .then(|| DeltaChunks::new(gpu, d, &layout.seq_start, &layout.past, cuts))
            .transpose()?;
        Ok(DeltaNetScratch {
            chunks,
            x: DevTensor::alloc(gpu, DType::F32, t * cd)?,
            z: gpu.alloc_f32(t * vd)?,
            b: gpu.alloc_f32(t * vh)?,
            a: gpu.alloc_f32(t * vh)?,
            mixed: gpu.alloc_f32(t * cd)?,
            o: gpu.alloc_f32(t * vd)?,
            row_seq: gpu.upload(&row_seq)?,
            tails: DevTensor::zeros(gpu, DType::F32, tail_len)?,
            init: DevTensor::zeros(gpu, DType::F32, state_len)?,
            cache,
        })
    }

    /// The four input projections of rows `[r0, r1)` from their normed
    /// input `[r1 − r0, hidden]`.
    pub fn project(
        &mut self,
        gpu: &Gpu,
        dn: &DeviceDeltaNet,
        input: &DevView<'_>,
        r0: usize,
        r1: usize,
    ) -> Result<()> {
        let d = &dn.desc;
        let n = r1 - r0;
        let h = input.len / n.max(1);
        let cd = d.conv_dim();
        let mut x = self.x.view_mut(r0 * cd, r1 * cd)?;
        gpu.matmul_wt_to(input, &dn.in_qkv.all(), &mut x, n, cd, h, cd)?;
        for (w, buf, width) in [
            (&dn.in_z, &mut self.z, d.value_dim()),
            (&dn.in_b, &mut self.b, d.num_v_heads),
            (&dn.in_a, &mut self.a, d.num_v_heads),
        ] {
            let mut out = sub_mut(buf, r0 * width, r1 * width)?;
            gpu.matmul_wt(input, &w.all(), &mut out, n, width, h, width)?;
        }
        Ok(())
    }

    /// The mixer after its projections, over the whole batch: convolution,
    /// norms and gates, the recurrence (from zero states, or with `store`
    /// from each hit's cached state and convolution tail, keeping the
    /// snapshots of the blocks the wave fills), the gated norm into `out`
    /// (`[t, value_dim]`, the output projection's input).
    pub fn mix(
        &mut self,
        gpu: &Gpu,
        dn: &DeviceDeltaNet,
        batch: &DeviceBatch,
        store: Option<&mut RecurrentStore>,
        out: &mut DevViewMut<'_>,
        eps: f32,
    ) -> Result<()> {
        let d = &dn.desc;
        let seq_start = batch.seq_start.as_view();
        let (k, cd) = (d.conv_kernel, d.conv_dim());
        let per = d.num_v_heads * d.k_head_dim * d.v_head_dim;
        let mut cache = self.cache.as_ref().zip(store);
        // Each hit's state and convolution tail, where its tokens start.
        if let Some((c, st)) = &cache {
            if k > 1 {
                let tail = (k - 1) * cd;
                gpu.copy_rows(&st.tail.all(), &mut self.tails.all_mut(), &c.starts, tail)?;
            }
            gpu.copy_rows(&st.state.all(), &mut self.init.all_mut(), &c.starts, per)?;
        }
        let tails = self.tails.f32_view()?;
        gpu.deltanet_conv(
            &self.x.f32_view()?,
            &dn.conv_t.as_view(),
            cache.is_some().then_some(&tails),
            &seq_start,
            &self.row_seq.as_view(),
            &mut self.mixed.as_view_mut(),
            d,
        )?;
        let (a_log, dt_bias) = (dn.a_log.as_view(), dn.dt_bias.as_view());
        gpu.deltanet_prep(
            &mut self.mixed.as_view_mut(),
            &mut self.b.as_view_mut(),
            &mut self.a.as_view_mut(),
            (&a_log, &dt_bias),
            d,
        )?;
        let (g, beta) = (self.a.as_view(), self.b.as_view());
        let init = self.init.f32_view()?;
        let cached = cache.is_some();
        // With the cache: its snapshots of the blocks this wave fills.
        let mut snaps = match cache.as_mut() {
            Some((c, st)) => Some((c.snap_at.as_view(), st.state.f32_view_mut()?)),
            None => None,
        };
        gpu.gated_delta_rule(
            &self.mixed.as_view(),
            (&g, &beta),
            &seq_start,
            self.chunks.as_mut(),
            cached.then_some(&init),
            None,
            snaps.as_mut().map(|(at, slots)| (&*at, slots)),
            &mut self.o.as_view_mut(),
            d,
        )?;
        if let Some((c, st)) = cache
            && k > 1
        {
            gpu.copy_rows(&self.x.all(), &mut st.tail.all_mut(), &c.tails, cd)?;
        }
        gpu.gated_rmsnorm_silu(
            &self.o.as_view(),
            &self.z.as_view(),
            &dn.norm.as_view(),
            out,
            d,
            eps,
        )
    }
}

/// One DeltaNet layer's share of a model's prefix cache on the device: per
/// cache block the recurrent state after its last token and the
/// convolution's last `K − 1` input rows.
pub struct RecurrentStore {
    /// `[capacity, vh · dk · dv]` f32.
    pub state: DevTensor,
    /// `[capacity · (K − 1), conv_dim]` f32.
    pub tail: DevTensor,
}

impl RecurrentStore {
    /// Bytes of one block.
    pub fn bytes_per_block(d: &DeltaNetDesc) -> usize {
        (d.num_v_heads * d.k_head_dim * d.v_head_dim + (d.conv_kernel - 1) * d.conv_dim()) * 4
    }

    /// Uninitialised: a block is written by the wave that fills it before
    /// any lookup can hit it.
    pub fn new(gpu: &Gpu, d: &DeltaNetDesc, capacity: usize) -> Result<RecurrentStore> {
        let per = d.num_v_heads * d.k_head_dim * d.v_head_dim;
        Ok(RecurrentStore {
            state: DevTensor::alloc(gpu, DType::F32, capacity * per)?,
            tail: DevTensor::alloc(
                gpu,
                DType::F32,
                capacity * (d.conv_kernel - 1) * d.conv_dim(),
            )?,
        })
    }
}
