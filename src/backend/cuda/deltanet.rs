//! Launchers for kernels/deltanet.cu, the gated-DeltaNet mixer's steps
//! between its input GEMMs and its output GEMM (Qwen 3.5's `linear_attn`);
//! CPU twin: `cpu::deltanet` (and `cpu::delta_rule::recurrent` for the
//! recurrence). Each checks its buffers against the layer's
//! [`DeltaNetDesc`] and the packed batch before launching.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::device::{CudaResultExt, DevView, DevViewMut, Gpu, cfg, sub_mut};
use super::forward::{DeviceBatch, PagedBatch};
use super::kernels::{ArgOrNull, check, dims_fit, typed};
use super::weights::DeviceDeltaNet;
use crate::Result;
use crate::model::config::DeltaNetDesc;

/// How `gated_delta_rule` lays out key heads of `dk` and value heads of
/// `dv`: the rows of the state each thread holds (the entry points are
/// built for 8, 16 and 32; the `dk / rpt` threads of a column must be a
/// power of two within a warp) and the block's threads, or `None` when the
/// kernel does not take these sizes.
pub(crate) fn recurrence_layout(dk: usize, dv: usize) -> Option<(usize, usize)> {
    let rpt = [32, 16, 8]
        .into_iter()
        .find(|&r| dk.is_multiple_of(r) && (dk / r).is_power_of_two() && dk / r <= 32)?;
    let threads = (dv * dk / rpt).next_multiple_of(32);
    (dv > 0 && threads <= 1024).then_some((rpt, threads))
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
    /// from `init` (`[seqs, vh, dk, dv]`) or zeros; the states after each
    /// sequence's last token into `final_state`; `out` `[n, vh·dv]`.
    #[allow(clippy::too_many_arguments)]
    pub fn gated_delta_rule(
        &self,
        mixed: &CudaView<'_, f32>, // [n, cd]: q | k | v (after deltanet_prep)
        (g, beta): (&CudaView<'_, f32>, &CudaView<'_, f32>), // [n, vh] each
        seq_start: &CudaView<'_, i32>, // [seqs + 1]
        init: Option<&CudaView<'_, f32>>,
        final_state: Option<&mut CudaViewMut<'_, f32>>,
        out: &mut CudaViewMut<'_, f32>, // [n, vh·dv]
        d: &DeltaNetDesc,
    ) -> Result<()> {
        let (cd, vh, dk, dv) = (d.conv_dim(), d.num_v_heads, d.k_head_dim, d.v_head_dim);
        let n = mixed.len() / cd.max(1);
        let seqs = seq_start.len().saturating_sub(1);
        let (rpt, threads) = recurrence_layout(dk, dv).ok_or_else(|| {
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
        dims_fit(&[n * cd, state])?;
        if seqs == 0 {
            return Ok(());
        }
        let smem = ((2 * dk + dv + 2) * 4) as u32;
        let f = self.function("deltanet", &format!("gated_delta_rule_r{rpt}"), smem)?;
        let (c, kh, v, k, vv) = (
            cd as i32,
            d.num_k_heads as i32,
            vh as i32,
            dk as i32,
            dv as i32,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(mixed).arg(g).arg(beta).arg(seq_start);
        b.arg_or_null(init)
            .arg_or_null(final_state)
            .arg(out)
            .arg(&c)
            .arg(&kh)
            .arg(&v)
            .arg(&k)
            .arg(&vv);
        // SAFETY: shapes checked above; one block per (sequence, value
        // head), `threads` covers dv columns × dk / rpt row parts.
        let grid = (seqs as u32, vh as u32, 1);
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

/// The buffers of a forward's DeltaNet layers, over every packed row (the
/// convolution and the recurrence run along whole sequences).
pub struct DeltaNetScratch {
    /// `[t, conv_dim]`: `in_proj_qkv`'s output.
    x: CudaSlice<f32>,
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
}

impl DeltaNetScratch {
    /// Buffers for `layout`'s rows. A hybrid model runs uncached on the
    /// GPU (its cache does not hold DeltaNet states yet): every sequence
    /// must start at position 0.
    pub fn new(gpu: &Gpu, d: &DeltaNetDesc, layout: &PagedBatch) -> Result<DeltaNetScratch> {
        check(layout.past.iter().all(|&p| p == 0), || {
            "deltanet: a cached prefix on the GPU (the device cache holds no DeltaNet states)"
                .into()
        })?;
        let t = layout.tokens();
        let (cd, vd, vh) = (d.conv_dim(), d.value_dim(), d.num_v_heads);
        let row_seq: Vec<i32> = (layout.seq_start.windows(2).enumerate())
            .flat_map(|(s, w)| std::iter::repeat_n(s as i32, (w[1] - w[0]) as usize))
            .collect();
        Ok(DeltaNetScratch {
            x: gpu.alloc_f32(t * cd)?,
            z: gpu.alloc_f32(t * vd)?,
            b: gpu.alloc_f32(t * vh)?,
            a: gpu.alloc_f32(t * vh)?,
            mixed: gpu.alloc_f32(t * cd)?,
            o: gpu.alloc_f32(t * vd)?,
            row_seq: gpu.upload(&row_seq)?,
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
        for (w, buf, width) in [
            (&dn.in_qkv, &mut self.x, d.conv_dim()),
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
    /// norms and gates, the recurrence from zero states, the gated norm into
    /// `out` (`[t, value_dim]`, the output projection's input).
    pub fn mix(
        &mut self,
        gpu: &Gpu,
        dn: &DeviceDeltaNet,
        batch: &DeviceBatch,
        out: &mut DevViewMut<'_>,
        eps: f32,
    ) -> Result<()> {
        let d = &dn.desc;
        let seq_start = batch.seq_start.as_view();
        gpu.deltanet_conv(
            &self.x.as_view(),
            &dn.conv_t.as_view(),
            None,
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
        gpu.gated_delta_rule(
            &self.mixed.as_view(),
            (&g, &beta),
            &seq_start,
            None,
            None,
            &mut self.o.as_view_mut(),
            d,
        )?;
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
