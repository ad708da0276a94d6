//! Causal attention over one sequence (GQA, sliding window, a cached
//! prefix), the CPU twin of `kernels/attention.cu`: per (head, 64-query
//! block), `S = Q·Kᵀ` and `O = P·V` through the `gemm` crate around a
//! 16-lane softmax; nothing of size `T²` is held. `attention_reference` is
//! the direct f64 twin the tests use.

use std::cell::RefCell;

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
/// Keys per score chunk (one AVX-512 register of f32).
const KEYS: usize = 16;
/// Query rows sharing each K or V row load.
const ROWS: usize = 4;

/// `s[r][j] = scale · (q_r · k_j)` for `nq` rows and the `nk` keys of `kt`
/// (`[hd][nk_pad]`, transposed, zero-padded). Row `r` needs keys `j <
/// diag + r + 1` only (causal); the rest of its row is left for the caller
/// to mask. Each dot product runs over `d = 0..hd` in order, so a score does
/// not depend on how many rows or keys the call holds.
#[allow(clippy::too_many_arguments)]
fn scores(
    q: &[f32], // row r at r · q_stride, [hd]
    q_stride: usize,
    nq: usize,
    kt: &[f32],
    nk: usize,
    nk_pad: usize,
    hd: usize,
    scale: f32,
    diag: usize,
    s: &mut [f32], // [nq, nk]
) {
    for r0 in (0..nq).step_by(ROWS) {
        let rows = ROWS.min(nq - r0);
        let keys = (diag + r0 + rows).min(nk);
        for c0 in (0..keys).step_by(KEYS) {
            let mut acc = [[0.0f32; KEYS]; ROWS];
            for d in 0..hd {
                let kv: &[f32; KEYS] = kt[d * nk_pad + c0..][..KEYS].try_into().expect("chunk");
                for (rr, a) in acc.iter_mut().enumerate().take(rows) {
                    let x = q[(r0 + rr) * q_stride + d];
                    for (a, &kk) in a.iter_mut().zip(kv) {
                        *a = x.mul_add(kk, *a);
                    }
                }
            }
            let n = KEYS.min(nk - c0);
            for (rr, a) in acc.iter().enumerate().take(rows) {
                let row = &mut s[(r0 + rr) * nk + c0..][..n];
                for (o, &a) in row.iter_mut().zip(a) {
                    *o = a * scale;
                }
            }
        }
    }
}

/// `out_r = Σ_j p[r][j] · v_j` over the keys `ranges[r]` (zero elsewhere),
/// accumulated in key order: rows that share a group add exact zeros for the
/// others' keys, so a row's result does not depend on its neighbours.
#[allow(clippy::too_many_arguments)]
fn weighted_values(
    p: &[f32], // [nq, nk]
    nk: usize,
    ranges: &[(usize, usize)],
    v: &[f32], // key j at j · v_stride, [hd]
    v_stride: usize,
    hd: usize,
    out: &mut [f32], // row r at r · o_stride
    o_stride: usize,
) {
    let nq = ranges.len();
    let mut acc = [[0.0f32; MAX_HEAD_DIM]; ROWS];
    for r0 in (0..nq).step_by(ROWS) {
        let rows = ROWS.min(nq - r0);
        let group = &ranges[r0..r0 + rows];
        let lo = group.iter().map(|g| g.0).min().unwrap_or(0);
        let hi = group.iter().map(|g| g.1).max().unwrap_or(0);
        for a in acc.iter_mut().take(rows) {
            a[..hd].fill(0.0);
        }
        for j in lo..hi {
            let vr = &v[j * v_stride..][..hd];
            for (rr, a) in acc.iter_mut().enumerate().take(rows) {
                let w = p[(r0 + rr) * nk + j];
                for (a, &x) in a[..hd].iter_mut().zip(vr) {
                    *a = w.mul_add(x, *a);
                }
            }
        }
        for (rr, a) in acc.iter().enumerate().take(rows) {
            out[(r0 + rr) * o_stride..][..hd].copy_from_slice(&a[..hd]);
        }
    }
}

/// Largest head dim of the CPU attention (Gemma 4's full layers use 512).
pub const MAX_HEAD_DIM: usize = 512;

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
    // Q_BLOCK), and each block's key range follows from its aligned start:
    // a query row then sees the same GEMM shapes, key range and reduction
    // order whether its prefix was computed in this call or cached, so the
    // prefix cache changes no bit of the result.
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
            let mut buf = buf.borrow_mut();
            let nk_pad = nk.div_ceil(KEYS) * KEYS;
            buf.resize(nq * nk + hd * nk_pad, 0.0);
            let (s, kt) = buf.split_at_mut(nq * nk);
            // Kᵀ of the visible keys, zero-padded to whole chunks.
            for (j, key) in (k_begin..k_end).enumerate() {
                let row = &k[key * k_stride + kvh * hd..][..hd];
                for (d, &x) in row.iter().enumerate() {
                    kt[d * nk_pad + j] = x;
                }
            }
            for d in 0..hd {
                kt[d * nk_pad + nk..(d + 1) * nk_pad].fill(0.0);
            }
            let qh = &q[q0 * qd + h * hd..];
            scores(
                qh,
                qd,
                nq,
                kt,
                nk,
                nk_pad,
                hd,
                scale,
                past + q0 - k_begin,
                s,
            );
            let mut ranges = Vec::with_capacity(nq);
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
                ranges.push((lo, hi));
            }
            let vh = &v[k_begin * v_stride + kvh * hd..];
            // SAFETY: each task writes its own (rows × head) tile of `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), q_len * qd) };
            weighted_values(
                s,
                nk,
                &ranges,
                vh,
                v_stride,
                hd,
                &mut o[q0 * qd + h * hd..],
                qd,
            );
        });
    });
}

/// Lanes of the vectorised softmax (one AVX-512 register of f32).
const SOFTMAX_LANES: usize = 16;

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
}

#[cfg(test)]
mod exactness {
    use super::*;

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
    fn a_query_row_gets_the_same_bits_whatever_the_call_length_or_cached_prefix() {
        for window in [None, Some(21)] {
            let shape = AttnShape::new(4, 2, 16, window);
            let t = 150;
            let (q, k, v) = (noise(t * 64, 1), noise(t * 32, 2), noise(t * 32, 3));
            let mut full = vec![0.0; t * 64];
            attention(&q, &k, 32, &v, 32, 0, t, shape, &mut full);
            // Shorter calls (the sequence ended earlier) and calls continuing
            // a cached prefix of `past` rows.
            for short in [1usize, 10, 17, 64, 65, 129] {
                let mut part = vec![0.0; short * 64];
                attention(&q, &k, 32, &v, 32, 0, short, shape, &mut part);
                assert!(
                    part.iter()
                        .zip(&full)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{window:?} len {short}"
                );
            }
            for past in [1usize, 8, 16, 40, 64, 70, 149] {
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
