//! Gemma's per-layer inputs on the device: after a layer's MLP,
//! `x += norm(proj(gelu(x · W_gateᵀ) ⊙ P[l]))`, where
//! `P[l] = (rmsnorm(e · W_proj[l]ᵀ · proj_scale) + E_ple[tok, l] · embed_scale) · combine_scale`
//! is computed for this layer from the scaled token embedding `e` (kept in
//! the compute dtype for the forward) by `ple_gate_mul` (kernels/act_mul.cu).
//! CPU twins: `cpu::embed::per_layer_inputs` and
//! `cpu::forward::per_layer_input`.

use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use super::device::{CudaResultExt, DevTensor, DevView, DevViewMut, Gpu, cfg, sub, sub_mut};
use super::kernels::{check, dims_fit, typed};
use super::weights::{DevicePle, LayerPle};
use crate::Result;
use crate::backend::profile::Part;

/// Scratch for one chunk of rows: the two `[rows, dim]` GEMM outputs and
/// the projection's input.
pub struct PleScratch {
    gate: CudaSlice<f32>,
    e_proj: CudaSlice<f32>,
    act: DevTensor,
}

impl PleScratch {
    pub fn new(gpu: &Gpu, ple: &DevicePle, rows: usize) -> Result<PleScratch> {
        let n = rows * ple.desc.dim;
        Ok(PleScratch {
            gate: gpu.alloc_f32(n)?,
            e_proj: gpu.alloc_f32(n)?,
            act: DevTensor::alloc(gpu, ple.table.dtype, n)?,
        })
    }
}

/// Layer `li`'s per-layer input over rows `[r0, r1)`: `x_in` holds those
/// rows of the residual stream after the MLP in the compute dtype, `emb`
/// the scaled token embedding of all rows; the projection (before its
/// norm, which the caller applies with the residual add) goes to `delta`
/// (in the compute dtype).
#[allow(clippy::too_many_arguments)]
pub fn per_layer_input(
    gpu: &Gpu,
    ple: &DevicePle,
    layer: &LayerPle,
    li: usize,
    tokens: &CudaSlice<u32>,
    emb: &DevTensor,
    x_in: &DevView<'_>,
    (r0, r1): (usize, usize),
    s: &mut PleScratch,
    delta: &mut DevViewMut<'_>,
    eps: f32,
) -> Result<()> {
    let (dim, h) = (ple.desc.dim, layer.proj.len / ple.desc.dim.max(1));
    let n = r1 - r0;
    gpu.part(Part::Gemm, || {
        let mut g = sub_mut(&mut s.gate, 0, n * dim)?;
        gpu.matmul_wt(x_in, &layer.gate.all(), &mut g, n, dim, h, dim)?;
        let rows = emb.view(r0 * h, r1 * h)?;
        let w = ple.proj.view(li * dim * h, (li + 1) * dim * h)?;
        let mut e = sub_mut(&mut s.e_proj, 0, n * dim)?;
        gpu.matmul_wt(&rows, &w, &mut e, n, dim, h, dim)
    })?;
    gpu.ple_gate_mul(
        &sub(&s.gate, 0, n * dim)?,
        &sub(&s.e_proj, 0, n * dim)?,
        &sub(tokens, r0, r1)?,
        ple,
        li,
        &mut s.act.view_mut(0, n * dim)?,
        eps,
    )?;
    gpu.part(Part::Gemm, || {
        let a = s.act.view(0, n * dim)?;
        gpu.matmul_wt_to(&a, &layer.proj.all(), delta, n, h, dim, h)
    })
}

impl Gpu {
    /// `out = gelu_tanh(gate) · P[layer]` for each row — kernels/act_mul.cu
    /// (module doc). Token ids must be `< ple.desc.vocab` (checked on the
    /// host before the forward).
    #[allow(clippy::too_many_arguments)]
    pub fn ple_gate_mul(
        &self,
        gate: &CudaView<'_, f32>,   // [n, dim]
        e_proj: &CudaView<'_, f32>, // [n, dim]
        tokens: &CudaView<'_, u32>, // [n]
        ple: &DevicePle,
        layer: usize,
        out: &mut DevViewMut<'_>, // [n, dim]
        eps: f32,
    ) -> Result<()> {
        let dim = ple.desc.dim;
        let n = tokens.len();
        let width = ple.table.len / ple.desc.vocab.max(1);
        check(
            dim > 0 && width.is_multiple_of(dim) && (layer + 1) * dim <= width,
            || format!("ple_gate_mul: layer {layer} of a table {width} wide, dim {dim}"),
        )?;
        check(
            gate.len() == n * dim && e_proj.len() == n * dim && out.len >= n * dim,
            || format!("ple_gate_mul: operands not [{n}, {dim}]"),
        )?;
        check(out.dtype == ple.table.dtype, || {
            "ple_gate_mul: out and table dtypes differ".into()
        })?;
        dims_fit(&[n, width])?;
        if n == 0 {
            return Ok(());
        }
        let name = typed("ple_gate_mul", out.dtype);
        let f = self.function("act_mul", &name, 0)?;
        let (d, w, l) = (dim as i32, width as i32, layer as i32);
        let p = &ple.desc;
        let table = ple.table.all();
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate)
            .arg(e_proj)
            .arg(tokens)
            .arg(&table.view)
            .arg(&ple.norm)
            .arg(&mut out.view)
            .arg(&d)
            .arg(&w)
            .arg(&l)
            .arg(&p.proj_scale)
            .arg(&ple.embed_scale)
            .arg(&p.combine_scale)
            .arg(&eps);
        // SAFETY: shapes checked above; token ids were checked against the
        // per-layer vocabulary on the host, so every table row read exists.
        let threads = dim.next_multiple_of(32).min(1024) as u32;
        unsafe { b.launch(cfg((n as u32, 1, 1), threads, 0)) }.ctx(&name)?;
        Ok(())
    }
}
