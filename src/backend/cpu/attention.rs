//! Causal attention over one sequence (GQA, sliding window, a cached
//! prefix), the CPU twin of `kernels/attention.cu`: per (head, 64-query
//! block aligned to absolute positions), `S = Q·Kᵀ` and `O = P·V` through
//! the `gemm` crate around a 16-lane softmax; nothing of size `T²` is held. `attention_reference` is
//! the direct f64 twin the tests use.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::score::fused::fast_exp;

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Keys `j` with `i − window < j ≤ i` are visible (None: all `j ≤ i`).
    pub window: Option<usize>,
    /// Softmax scale of the scores (usually 1/√head_dim).
    pub scale: f32,
}

impl AttnShape {
    /// The usual geometry: scale 1/√head_dim.
    pub fn new(
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        window: Option<usize>,
    ) -> AttnShape {
        AttnShape {
            num_heads,
            num_kv_heads,
            head_dim,
            window,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }
}

const Q_BLOCK: usize = 64;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Causal attention for one sequence whose queries sit at absolute positions
/// `[past, past + q_len)` and whose keys/values cover `[0, past + q_len)`.
///
/// `q`: `[q_len, heads·hd]`, `k`/`v`: `[kv_len, kv_heads·hd]` (row strides
/// `k_stride`/`v_stride` allow views into a packed cache), `out`: `[q_len,
/// heads·hd]`. Scores are computed block by block (`Q_BLOCK` queries × the
/// visible keys) with GEMMs and a row softmax; nothing of size `T²` is held.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    k_stride: usize,
    v: &[f32],
    v_stride: usize,
    past: usize,
    q_len: usize,
    shape: AttnShape,
    out: &mut [f32],
) {
    let AttnShape {
        num_heads,
        num_kv_heads,
        head_dim: hd,
        window,
        scale,
    } = shape;
    let qd = num_heads * hd;
    let group = num_heads / num_kv_heads;
    // Query blocks are aligned to absolute positions (multiples of
    // Q_BLOCK) and a block's key range follows from its aligned start, so a
    // query row sees the same GEMM shapes whether its prefix was computed in
    // this call or cached. (A call that ends mid-block still gives its last
    // rows a shorter key range than a longer call would, and the `gemm`
    // crate's small-size paths then round differently: a few ulps.)
    let first_abs = past / Q_BLOCK * Q_BLOCK;
    let n_blocks = (past + q_len).div_ceil(Q_BLOCK) - past / Q_BLOCK;
    let out_ptr = SharedOut(out.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..num_heads)
        .flat_map(|h| (0..n_blocks).map(move |b| (h, b)))
        .collect();
    tasks.par_iter().for_each(|&(h, b)| {
        let kvh = h / group;
        let abs0 = first_abs + b * Q_BLOCK;
        let q0 = abs0.max(past) - past;
        let q1 = (abs0 + Q_BLOCK - past).min(q_len);
        let nq = q1 - q0;
        // Visible key range for the whole aligned block.
        let k_end = past + q1;
        let k_begin = match window {
            Some(w) => (abs0 + 1).saturating_sub(w),
            None => 0,
        };
        let nk = k_end - k_begin;
        SCORES.with(|buf| {
            let mut s = buf.borrow_mut();
            s.resize(nq * nk, 0.0);
            // S = Q_blk · K_visibleᵀ
            unsafe {
                gemm::gemm(
                    nq,
                    nk,
                    hd,
                    s.as_mut_ptr(),
                    1,
                    nk as isize,
                    false,
                    q.as_ptr().add(q0 * qd + h * hd),
                    1,
                    qd as isize,
                    k.as_ptr().add(k_begin * k_stride + kvh * hd),
                    k_stride as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for (r, row) in s.chunks_mut(nk).enumerate() {
                let i = past + q0 + r; // absolute query position
                let lo = match window {
                    Some(w) => (i + 1).saturating_sub(w),
                    None => 0,
                };
                let (lo, hi) = (lo - k_begin, i + 1 - k_begin);
                softmax_in_place(&mut row[lo..hi]);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
            }
            // O_blk = P · V_visible
            unsafe {
                gemm::gemm(
                    nq,
                    hd,
                    nk,
                    out_ptr.get().add(q0 * qd + h * hd),
                    1,
                    qd as isize,
                    false,
                    s.as_ptr(),
                    1,
                    nk as isize,
                    v.as_ptr().add(k_begin * v_stride + kvh * hd),
                    1,
                    v_stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
    });
}

/// Lanes of the vectorised softmax (one AVX-512 register of f32).
const SOFTMAX_LANES: usize = 16;

crate::dispatch! {
    /// `row ← softmax(row)`: exact max, `fast_exp`, and the sum kept in 16
    /// independent lanes so the loops vectorise (a single running sum made the
    /// exponentials a scalar, latency-bound chain: 30% of the toyworld demo's
    /// time in a profile).
    pub fn softmax_in_place(row: &mut [f32]) {
        const L: usize = SOFTMAX_LANES;
        let mut lanes = [f32::NEG_INFINITY; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for (m, &x) in lanes.iter_mut().zip(c) {
                *m = m.max(x);
            }
        }
        let m = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sums = [0.0f32; L];
        let mut chunks = row.chunks_exact_mut(L);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c) {
                *x = fast_exp(*x - m);
                *s += *x;
            }
        }
        let mut sum = 0.0f32;
        for x in chunks.into_remainder() {
            *x = fast_exp(*x - m);
            sum += *x;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// Direct O(T²) attention in f64: the independent twin used by tests.
#[allow(clippy::too_many_arguments)]
pub fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    past: usize,
    q_len: usize,
    shape: AttnShape,
) -> Vec<f32> {
    let (nh, nkv, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let (qd, kvd) = (nh * hd, nkv * hd);
    let mut out = vec![0.0; q_len * qd];
    for r in 0..q_len {
        let i = past + r;
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let lo = shape.window.map_or(0, |w| (i + 1).saturating_sub(w));
            let scores: Vec<f64> = (lo..=i)
                .map(|j| {
                    (0..hd)
                        .map(|d| q[r * qd + h * hd + d] as f64 * k[j * kvd + kvh * hd + d] as f64)
                        .sum::<f64>()
                        * shape.scale as f64
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            for d in 0..hd {
                let acc: f64 = scores
                    .iter()
                    .enumerate()
                    .map(|(t, s)| (s - m).exp() / z * v[(lo + t) * kvd + kvh * hd + d] as f64)
                    .sum();
                out[r * qd + h * hd + d] = acc as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_in_place_matches_f64_at_every_length_around_the_lanes() {
        for n in [1usize, 2, 15, 16, 17, 31, 32, 33, 100, 1000] {
            let row: Vec<f32> = noise(n, n as u32).iter().map(|x| x * 60.0).collect();
            let m = row
                .iter()
                .map(|&x| x as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
            let mut got = row.clone();
            softmax_in_place(&mut got);
            for (i, (&g, &x)) in got.iter().zip(&row).enumerate() {
                let want = (x as f64 - m).exp() / z;
                assert!(
                    (g as f64 - want).abs() <= 1e-6 * want.max(1e-30) + 1e-9,
                    "n {n} [{i}]: {g} vs {want}"
                );
            }
            let total: f64 = got.iter().map(|&g| g as f64).sum();
            assert!((total - 1.0).abs() < 1e-5, "n {n}: sums to {total}");
        }
    }

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) >> 8) as f32
                    / (1u32 << 24) as f32
                    - 0.5
            })
            .collect()
    }

    #[test]
    fn blocked_attention_equals_direct_attention_with_gqa_window_and_past() {
        for (window, past, q_len) in [
            (None, 0, 150),
            (Some(17), 0, 150),
            (None, 40, 70),
            (Some(33), 40, 70),
        ] {
            let shape = AttnShape::new(4, 2, 8, window);
            let kv_len = past + q_len;
            let q = noise(q_len * 32, 1);
            let k = noise(kv_len * 16, 2);
            let v = noise(kv_len * 16, 3);
            let want = attention_reference(&q, &k, &v, past, q_len, shape);
            let mut got = vec![f32::NAN; q_len * 32];
            attention(&q, &k, 16, &v, 16, past, q_len, shape, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{window:?} {past}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_query_row_gets_the_same_bits_whatever_prefix_is_cached() {
        for window in [None, Some(21)] {
            let shape = AttnShape::new(4, 2, 16, window);
            let t = 150;
            let (q, k, v) = (noise(t * 64, 1), noise(t * 32, 2), noise(t * 32, 3));
            let mut full = vec![0.0; t * 64];
            attention(&q, &k, 32, &v, 32, 0, t, shape, &mut full);
            // (A one-row call takes the `gemm` crate's vector path: not listed.)
            for past in [1usize, 8, 16, 40, 64, 70, 140] {
                let mut part = vec![0.0; (t - past) * 64];
                attention(
                    &q[past * 64..],
                    &k,
                    32,
                    &v,
                    32,
                    past,
                    t - past,
                    shape,
                    &mut part,
                );
                let want = &full[past * 64..];
                assert!(
                    part.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{window:?} past {past}"
                );
            }
        }
    }
}
