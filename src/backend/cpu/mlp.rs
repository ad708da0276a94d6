//! The gated MLP block, `down(act(gate(x)) · up(x))`, and its activations
//! (SiLU for SwiGLU, GELU-tanh for GeGLU): the CPU twins of
//! `kernels/act_mul.cu`.

use rayon::prelude::*;

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

/// GELU with the tanh approximation (`gelu_pytorch_tanh`), in f32, in
/// PyTorch's order of operations and with libm's tanh. A vectorised ≤ 3-ulp
/// tanh (rten-vecmath) here moved long_gemma4's log-probs from 1.5e-5 to
/// 6.4e-5 of transformers' (the fixture amplifies each rounding), for ~8%
/// of a 640-wide Gemma pass and ~1% of gemma-4-E4B's: not taken.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// `gate[i] = act(gate[i]) · other[i]`.
pub fn act_mul_inplace(act: Act, gate: &mut [f32], other: &[f32]) {
    match act {
        Act::Silu => silu_mul_inplace(gate, other),
        Act::GeluTanh => gate
            .par_chunks_mut(4096)
            .zip(other.par_chunks(4096))
            .for_each(|(g, u)| {
                for (g, u) in g.iter_mut().zip(u) {
                    *g = gelu_tanh(*g) * u;
                }
            }),
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
}
