//! `out = x · Wᵀ` with `x` f32 activations and `W` a stored weight in bf16,
//! f16 or f32 (`[N, K]`, row-major as safetensors keeps it).
//!
//! Tiles of W are widened to f32 into a per-thread buffer (never the whole
//! matrix) and multiplied with the `gemm` crate's AVX-512/AVX2 kernels. Work
//! is split over (token chunk × weight-row tile) so both cores stay busy even
//! for narrow projections (k/v of GQA models).

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::model::weights::{Data, Tensor};

/// Weight rows widened per task.
const N_TILE: usize = 256;

thread_local! {
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[t, n] (+)= Σ_k x[t, k] · w[n, k]` for `t < rows`.
///
/// `x` is `[rows, k]` with row stride `k`; `out` is `[rows, n]` with row
/// stride `ldo ≥ n`. With `accumulate` the product is added to `out` (used to
/// fuse residual adds into the output projections).
pub fn matmul_wt(
    x: &[f32],
    rows: usize,
    w: &Tensor,
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
) {
    let (n, k) = (w.rows(), w.cols());
    matmul_wt_rows(x, rows, k, w.data, 0, n, out, ldo, accumulate);
}

/// As [`matmul_wt`] over weight rows `[n0, n0 + n)` of a `[*, k]` matrix,
/// writing `out[:, 0..n]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_wt_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    w: Data,
    n0: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
) {
    if rows == 0 || n == 0 {
        return;
    }
    assert!(
        x.len() >= rows * k,
        "matmul: x has {} < {rows}×{k}",
        x.len()
    );
    assert!(out.len() >= (rows - 1) * ldo + n, "matmul: out too small");
    assert!(w.len() >= (n0 + n) * k, "matmul: weight too small");

    let threads = rayon::current_num_threads().max(1);
    let n_tiles = n.div_ceil(N_TILE);
    // Split tokens when there are too few weight tiles to feed every thread.
    let t_chunks = if n_tiles >= 2 * threads {
        1
    } else {
        (2 * threads)
            .div_ceil(n_tiles)
            .min(rows.div_ceil(16))
            .max(1)
    };
    let t_step = rows.div_ceil(t_chunks);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..n_tiles)
        .flat_map(|j| (0..t_chunks).map(move |i| (i, j)))
        .collect();
    let run = |&(ti, nj): &(usize, usize)| {
        let t0 = ti * t_step;
        let t1 = ((ti + 1) * t_step).min(rows);
        if t0 >= t1 {
            return;
        }
        let c0 = nj * N_TILE;
        let c1 = ((nj + 1) * N_TILE).min(n);
        let nb = c1 - c0;
        let op = out_ptr;
        let mul = |wp: *const f32| unsafe {
            gemm::gemm(
                t1 - t0,
                nb,
                k,
                op.0.add(t0 * ldo + c0),
                1,
                ldo as isize,
                accumulate,
                x.as_ptr().add(t0 * k),
                1,
                k as isize,
                wp,
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        };
        match w {
            Data::F32(s) => mul(s[(n0 + c0) * k..].as_ptr()),
            _ => WIDE.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.resize(nb * k, 0.0);
                w.widen_into((n0 + c0) * k, &mut buf[..nb * k]);
                mul(buf.as_ptr());
            }),
        }
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// Plain triple loop in f64, the reference the tests compare against.
pub fn matmul_wt_reference(x: &[f32], rows: usize, w: &Tensor) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    let wf = w.data.to_f32_vec();
    let mut out = vec![0.0; rows * n];
    for t in 0..rows {
        for j in 0..n {
            let mut acc = 0.0f64;
            for i in 0..k {
                acc += x[t * k + i] as f64 * wf[j * k + i] as f64;
            }
            out[t * n + j] = acc as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_mixed_dtype_matmul_equals_the_triple_loop() {
        let (rows, n, k) = (37, 600, 72);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let wf: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let wb: Vec<half::bf16> = wf.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let wh: Vec<half::f16> = wf.iter().map(|&v| half::f16::from_f32(v)).collect();
        let shape = [n, k];
        for data in [Data::F32(&wf), Data::BF16(&wb), Data::F16(&wh)] {
            let t = Tensor {
                name: "w",
                shape: &shape,
                data,
            };
            let want = matmul_wt_reference(&x, rows, &t);
            let mut got = vec![1.0; rows * (n + 3)];
            matmul_wt(&x, rows, &t, &mut got, n + 3, true);
            for r in 0..rows {
                for c in 0..n {
                    let g = got[r * (n + 3) + c] - 1.0;
                    assert!(
                        (g - want[r * n + c]).abs() < 1e-4,
                        "{r},{c}: {g} vs {}",
                        want[r * n + c]
                    );
                }
            }
        }
    }
}
