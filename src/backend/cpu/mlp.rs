//! The gated MLP block, `down(act(gate(x)) · up(x))`, and its activations
//! (SiLU for SwiGLU, GELU-tanh for GeGLU): the CPU twins of
//! `kernels/act_mul.cu`.

use rayon::prelude::*;
use rten_simd::SimdUnaryOp;
use rten_vecmath::Tanh;

use super::gemm_bf16::Gemm;
use crate::model::config::{Act, MlpDesc};
use crate::model::layout::LayerWeights;
use crate::score::fused::fast_exp;

/// `gate[i] = silu(gate[i]) · up[i]`.
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| {
            silu_mul_chunk(g, u);
        });
}

crate::dispatch! {
    fn silu_mul_chunk(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            let s = *g / (1.0 + fast_exp(-*g));
            *g = s * u;
        }
    }
}

/// √(2/π), GELU-tanh's inner factor.
const GELU_C: f32 = 0.797_884_6;

/// GELU with the tanh approximation (`gelu_pytorch_tanh`), in f32, one
/// value with libm's tanh: the reference the vectorised
/// [`act_mul_inplace`] is held to.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh())
}

/// Values of a GeGLU chunk.
const GELU_CHUNK: usize = 4096;

/// `gate[i] = gelu_tanh(gate[i]) · up[i]` over one chunk, in PyTorch's
/// order of operations, the tanh vectorised (rten-vecmath, ≤ 3 ulp).
/// libm's scalar tanh (~7 ns a value, through expm1f) was a fifth of a
/// 640-wide Gemma pass (perf).
fn geglu_chunk(gate: &mut [f32], up: &[f32]) {
    let mut t = [0.0f32; GELU_CHUNK];
    let t = &mut t[..gate.len()];
    for (t, &x) in t.iter_mut().zip(gate.iter()) {
        *t = GELU_C * (x + 0.044715 * x * x * x);
    }
    Tanh {}.map_mut(t);
    for ((g, u), t) in gate.iter_mut().zip(up).zip(t.iter()) {
        *g = 0.5 * *g * (1.0 + t) * u;
    }
}

/// `gate[i] = act(gate[i]) · other[i]`.
pub fn act_mul_inplace(act: Act, gate: &mut [f32], other: &[f32]) {
    match act {
        Act::Silu => silu_mul_inplace(gate, other),
        Act::GeluTanh => gate
            .par_chunks_mut(GELU_CHUNK)
            .zip(other.par_chunks(GELU_CHUNK))
            .for_each(|(g, u)| geglu_chunk(g, u)),
    }
}

/// Scratch of one chunk of rows.
pub struct MlpScratch {
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl MlpScratch {
    pub fn new(rows: usize, intermediate: usize) -> MlpScratch {
        MlpScratch {
            gate: vec![0.0; rows * intermediate],
            up: vec![0.0; rows * intermediate],
        }
    }
}

/// `out (+)= down(act(gate(x)) · up(x))` for `n` rows of `x`, the GEMMs in
/// `gemm`'s arithmetic.
#[allow(clippy::too_many_arguments)]
pub fn mlp(
    gemm: Gemm,
    desc: &MlpDesc,
    w: &LayerWeights,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    accumulate: bool,
    s: &mut MlpScratch,
) {
    let inter = desc.intermediate;
    let h = out.len() / n.max(1);
    s.gate.resize(n * inter, 0.0);
    s.up.resize(n * inter, 0.0);
    let (g, u) = (&mut s.gate[..n * inter], &mut s.up[..n * inter]);
    gemm.matmul_wt(x, n, &w.gate, g, inter, false);
    gemm.matmul_wt(x, n, &w.up, u, inter, false);
    act_mul_inplace(desc.act, g, u);
    gemm.matmul_wt(g, n, &w.down, &mut out[..n * h], h, accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_the_formula_in_f64() {
        for x in [-6.0f32, -1.5, -0.3, 0.0, 0.2, 1.0, 3.7] {
            let xd = x as f64;
            let want = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            assert!((gelu_tanh(x) as f64 - want).abs() < 1e-6, "{x}");
        }
    }

    #[test]
    fn vectorised_geglu_matches_the_formula_in_f64_and_the_scalar_one() {
        // Every 1/625 from −8 to 8 (saturation both sides): two whole
        // chunks and an odd tail, times `up`.
        let xs: Vec<f32> = (-5000..=5000).map(|i| i as f32 / 625.0).collect();
        let up: Vec<f32> = (0..xs.len()).map(|i| 1.0 + (i % 7) as f32 / 8.0).collect();
        let mut got = xs.clone();
        act_mul_inplace(Act::GeluTanh, &mut got, &up);
        for ((&x, &u), &g) in xs.iter().zip(&up).zip(&got) {
            let xd = x as f64;
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let want = 0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd.powi(3))).tanh()) * u as f64;
            let tol = 2e-6 * want.abs().max(1.0);
            assert!((g as f64 - want).abs() <= tol, "{x}: {g} vs {want}");
            let scalar = gelu_tanh(x) * u;
            assert!((g - scalar).abs() as f64 <= tol, "{x}: {g} vs {scalar}");
        }
    }
}
