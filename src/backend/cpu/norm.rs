//! RMSNorm, the CPU twin of `kernels/rmsnorm.cu`, written to match
//! transformers' f32 arithmetic: mean of squares in f32, then
//! `x · rsqrt(var + eps) · w` (or without a weight: Gemma's v norm). A
//! zero-centred norm ([`NormKind::OnePlusWeight`]) is the same with the
//! weight `1 + w` formed in f32 once ([`norm_weight`]), as transformers does.

use rayon::prelude::*;

use crate::model::config::NormKind;
use crate::model::weights::Tensor;

/// A stored norm weight as it scales the normalised values: `w`, or `1 + w`.
pub fn norm_weight(kind: NormKind, t: &Tensor) -> Vec<f32> {
    let mut w = t.data.to_f32_vec();
    if kind == NormKind::OnePlusWeight {
        w.iter_mut().for_each(|x| *x += 1.0);
    }
    w
}

/// `x[r] = x[r] / rms(x[r]) · w` for every row of width `w.len()`.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    x.par_chunks_mut(d * 16).for_each(|rows| {
        for row in rows.chunks_mut(d) {
            rms_norm_row(row, w, eps);
        }
    });
}

/// `out[r] = rmsnorm(x[r]) · w` (rows of width `w.len()`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d * 16)
        .zip(x.par_chunks(d * 16))
        .for_each(|(o, i)| {
            o.copy_from_slice(i);
            for row in o.chunks_mut(d) {
                rms_norm_row(row, w, eps);
            }
        });
}

#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

crate::dispatch! {
    pub fn rms_norm_row(row: &mut [f32], w: &[f32], eps: f32) {
        let inv = inv_rms(row, eps);
        for (v, g) in row.iter_mut().zip(w) {
            *v = g * (*v * inv);
        }
    }
}

crate::dispatch! {
    /// RMSNorm without a weight.
    pub fn rms_norm_row_unit(row: &mut [f32], eps: f32) {
        let inv = inv_rms(row, eps);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `x[r] += rmsnorm(d[r]) · w`: a post-norm block's residual add.
pub fn add_normed(x: &mut [f32], d: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    x.par_chunks_mut(n * 16)
        .zip(d.par_chunks_mut(n * 16))
        .for_each(|(xs, ds)| {
            for (xr, dr) in xs.chunks_mut(n).zip(ds.chunks_mut(n)) {
                rms_norm_row(dr, w, eps);
                for (a, b) in xr.iter_mut().zip(dr.iter()) {
                    *a += b;
                }
            }
        });
}
