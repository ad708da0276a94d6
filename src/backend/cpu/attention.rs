//! Causal attention over one sequence (GQA, sliding window, a cached
//! prefix), the CPU twin of `kernels/attention.cu`: one task per (KV head,
//! 64-query block aligned to absolute positions) runs padv's fused tile
//! ([`tile`]: `Q·Kᵀ`, an online softmax and `P·V` per 64-key tile, AVX-512 /
//! AVX2 / portable through [`crate::simd`]); nothing of size `T²` is held.
//! `attention_reference` is the direct f64 twin the tests use.

use rayon::prelude::*;

use crate::backend::profile::{self, Part};
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

    /// The geometry, window and scale of an attention mixer.
    pub fn of(a: &crate::model::config::AttnDesc) -> AttnShape {
        AttnShape {
            num_heads: a.num_heads,
            num_kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
            window: a.window,
            scale: a.scale,
        }
    }
}

mod tile;
mod tile_bf16;

use tile::{Call, Plain, Q_BLOCK, Scratch};

/// Causal attention for one sequence whose queries sit at absolute positions
/// `[past, past + q_len)` and whose keys/values cover `[0, past + q_len)`.
///
/// `q`: `[q_len, heads·hd]`, `k`/`v`: `[kv_len, kv_heads·hd]` (row strides
/// `k_stride`/`v_stride` allow views into a packed cache), `out`: `[q_len,
/// heads·hd]`. One task per (KV head, 64-query block aligned to absolute
/// positions) runs the fused tile of [`tile`]; a row's bits depend only on
/// the row and its keys (see there), so a cached prefix changes none.
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
    let _span = profile::span(Part::Attention);
    let level = crate::simd::level();
    attention_at(
        level,
        Tile::F32,
        q,
        k,
        k_stride,
        v,
        v_stride,
        past,
        q_len,
        shape,
        out,
    )
}

/// Which tile a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tile {
    F32,
    /// The bf16 mode's ([`tile_bf16`]); `vdpbf16ps` itself when `native`.
    Bf16 {
        native: bool,
    },
}

/// [`attention`] / [`attention_bf16`] with the kernels of `level` (at most
/// [`crate::simd::level`]).
#[allow(clippy::too_many_arguments)]
fn attention_at(
    level: crate::simd::Level,
    tile: Tile,
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
    assert!(level <= crate::simd::detected());
    let Some(call) = checked_call(q, k, k_stride, v, v_stride, past, q_len, shape, out) else {
        return;
    };
    // SAFETY (both): the buffers were checked; each task writes only its
    // block's rows of its group's heads.
    match tile {
        Tile::F32 => for_each_task(&call, |g, p0, p1| unsafe {
            run_task(level, &call, g, p0, p1)
        }),
        Tile::Bf16 { native } => {
            assert!(!native || crate::simd::has_avx512_bf16());
            let packed = tile_bf16::Packed::new(&call);
            for_each_task(&call, |g, p0, p1| unsafe {
                run_task_bf16(level, native, &call, &packed, g, p0, p1)
            })
        }
    }
}

/// The call's operands after checking every buffer against the shape;
/// `None` when there is nothing to compute.
#[allow(clippy::too_many_arguments)]
fn checked_call(
    q: &[f32],
    k: &[f32],
    k_stride: usize,
    v: &[f32],
    v_stride: usize,
    past: usize,
    q_len: usize,
    shape: AttnShape,
    out: &mut [f32],
) -> Option<Call> {
    let (nh, nkv, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let kv_len = past + q_len;
    assert!(nkv > 0 && nh % nkv == 0, "{nh} heads over {nkv} KV heads");
    assert!(q.len() >= q_len * nh * hd && out.len() >= q_len * nh * hd);
    assert!(k_stride >= nkv * hd && v_stride >= nkv * hd);
    assert!(q_len == 0 || (k.len() >= (kv_len - 1) * k_stride + nkv * hd));
    assert!(q_len == 0 || (v.len() >= (kv_len - 1) * v_stride + nkv * hd));
    if q_len == 0 || hd == 0 {
        return None;
    }
    Some(Call {
        q: q.as_ptr(),
        k: k.as_ptr(),
        k_stride,
        v: v.as_ptr(),
        v_stride,
        out: out.as_mut_ptr(),
        past,
        q_len,
        shape,
    })
}

/// Every task (KV head `g`, query rows `[p0, p1)`) of `c`, in parallel:
/// blocks aligned to absolute positions, the longest (latest) first so the
/// threads finish together.
fn for_each_task(c: &Call, run: impl Fn(usize, usize, usize) + Sync) {
    let (past, q_len, nkv) = (c.past, c.q_len, c.shape.num_kv_heads);
    let kv_len = past + q_len;
    let first = past / Q_BLOCK;
    let last = (kv_len - 1) / Q_BLOCK;
    let tasks: Vec<(usize, usize)> = (first..=last)
        .rev()
        .flat_map(|b| (0..nkv).map(move |g| (g, b)))
        .collect();
    tasks.par_iter().for_each(|&(g, b)| {
        let p0 = (b * Q_BLOCK).max(past) - past;
        let p1 = ((b + 1) * Q_BLOCK - past).min(q_len);
        run(g, p0, p1);
    });
}

/// [`attention`] in the CPU's bf16 mode: both products on bf16 pairs
/// ([`tile_bf16`]: `vdpbf16ps` where the CPU has AVX512-BF16, its exact
/// arithmetic in f32 lanes elsewhere), softmax and sums in f32.
#[allow(clippy::too_many_arguments)]
pub fn attention_bf16(
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
    let _span = profile::span(Part::Attention);
    let level = crate::simd::level();
    let tile = Tile::Bf16 {
        native: crate::simd::has_avx512_bf16(),
    };
    attention_at(
        level, tile, q, k, k_stride, v, v_stride, past, q_len, shape, out,
    )
}

/// One bf16 task at `level` (`vdpbf16ps` when `native`).
///
/// # Safety
/// As `tile_bf16::task`; `level` and `native` are what the CPU supports.
unsafe fn run_task_bf16(
    level: crate::simd::Level,
    native: bool,
    c: &Call,
    pk: &tile_bf16::Packed,
    g: usize,
    p0: usize,
    p1: usize,
) {
    use tile_bf16::{SCRATCH, Scratch, task};
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        #[cfg(target_arch = "x86_64")]
        {
            type Args<'a> = (&'a Call, &'a tile_bf16::Packed, &'a mut Scratch);
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
            unsafe fn native_bf16((c, pk, s): Args<'_>, g: usize, p0: usize, p1: usize) {
                unsafe { task::<tile::avx512::Zmm, 6>(c, pk, s, g, p0, p1) }
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            unsafe fn avx512((c, pk, s): Args<'_>, g: usize, p0: usize, p1: usize) {
                unsafe { task::<Plain<true>, 4>(c, pk, s, g, p0, p1) }
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2((c, pk, s): Args<'_>, g: usize, p0: usize, p1: usize) {
                unsafe { task::<Plain<true>, 4>(c, pk, s, g, p0, p1) }
            }
            // SAFETY: `level` / `native` are at most what the CPU reports.
            match (native, level) {
                (true, _) => return unsafe { native_bf16((c, pk, s), g, p0, p1) },
                (_, crate::simd::Level::Avx512) => return unsafe { avx512((c, pk, s), g, p0, p1) },
                (_, crate::simd::Level::Avx2) => return unsafe { avx2((c, pk, s), g, p0, p1) },
                (_, crate::simd::Level::Portable) => {}
            }
        }
        let _ = native;
        const FUSED: bool = cfg!(target_arch = "aarch64");
        // SAFETY: forwarded from the caller.
        unsafe { task::<Plain<FUSED>, 4>(c, pk, s, g, p0, p1) }
    })
}

/// One task at `level`.
///
/// # Safety
/// As `tile::task`; `level` is at most what the CPU supports.
unsafe fn run_task(level: crate::simd::Level, c: &Call, g: usize, p0: usize, p1: usize) {
    tile::SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            unsafe fn avx512(c: &Call, s: &mut Scratch, g: usize, p0: usize, p1: usize) {
                unsafe { tile::task::<tile::avx512::Zmm, 6>(c, s, g, p0, p1) }
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(c: &Call, s: &mut Scratch, g: usize, p0: usize, p1: usize) {
                unsafe { tile::task::<Plain<true>, 4>(c, s, g, p0, p1) }
            }
            match level {
                // SAFETY: `level` is at most what the CPU reports.
                crate::simd::Level::Avx512 => return unsafe { avx512(c, s, g, p0, p1) },
                crate::simd::Level::Avx2 => return unsafe { avx2(c, s, g, p0, p1) },
                crate::simd::Level::Portable => {}
            }
        }
        // x86-64's baseline has no FMA; aarch64's has.
        const FUSED: bool = cfg!(target_arch = "aarch64");
        // SAFETY: forwarded from the caller.
        unsafe { tile::task::<Plain<FUSED>, 4>(c, s, g, p0, p1) }
    })
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

    use crate::simd::Level;

    /// The levels this CPU can run.
    fn levels() -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= crate::simd::detected())
            .collect()
    }

    /// Random Q/K/V for `t` positions (`past` of them cached) with strided
    /// K/V rows (two spare columns), as the cache gather lays them out.
    struct Case {
        shape: AttnShape,
        past: usize,
        t: usize,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
    }

    impl Case {
        fn new(
            heads: usize,
            kv: usize,
            hd: usize,
            window: Option<usize>,
            past: usize,
            t: usize,
        ) -> Case {
            let kvd = kv * hd;
            let seed = (heads * 31 + hd * 7 + t) as u32;
            Case {
                shape: AttnShape::new(heads, kv, hd, window),
                past,
                t,
                q: noise(t * heads * hd, seed)
                    .iter()
                    .map(|x| x * 4.0)
                    .collect(),
                k: noise(t * (kvd + 2), seed + 1)
                    .iter()
                    .map(|x| x * 4.0)
                    .collect(),
                v: noise(t * (kvd + 2), seed + 2),
            }
        }
        fn qd(&self) -> usize {
            self.shape.num_heads * self.shape.head_dim
        }
        fn stride(&self) -> usize {
            self.shape.num_kv_heads * self.shape.head_dim + 2
        }
        /// The rows `[from, t)` computed with `[0, from)` as cached keys.
        fn run(&self, level: Level, from: usize) -> Vec<f32> {
            self.run_tile(level, Tile::F32, from)
        }
        /// [`Case::run`] in bf16 mode (`vdpbf16ps` when `native`).
        fn run_bf16(&self, level: Level, native: bool, from: usize) -> Vec<f32> {
            self.run_tile(level, Tile::Bf16 { native }, from)
        }
        fn run_tile(&self, level: Level, tile: Tile, from: usize) -> Vec<f32> {
            let (qd, ks) = (self.qd(), self.stride());
            let mut out = vec![f32::NAN; (self.t - from) * qd];
            let n = self.t * ks;
            attention_at(
                level,
                tile,
                &self.q[from * qd..],
                &self.k[..n],
                ks,
                &self.v[..n],
                ks,
                from,
                self.t - from,
                self.shape,
                &mut out,
            );
            out
        }
        /// This case with Q, K and V rounded to bf16.
        fn rounded(&self) -> Case {
            let r = |x: &[f32]| -> Vec<f32> {
                x.iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect()
            };
            Case {
                q: r(&self.q),
                k: r(&self.k),
                v: r(&self.v),
                ..*self
            }
        }
        /// The f64 reference for rows `[past, t)`.
        fn reference(&self) -> Vec<f32> {
            let (kvd, ks) = (self.shape.num_kv_heads * self.shape.head_dim, self.stride());
            let dense =
                |x: &[f32]| -> Vec<f32> { x.chunks(ks).flat_map(|r| r[..kvd].to_vec()).collect() };
            attention_reference(
                &self.q[self.past * self.qd()..],
                &dense(&self.k),
                &dense(&self.v),
                self.past,
                self.t - self.past,
                self.shape,
            )
        }
    }

    #[test]
    fn the_tile_equals_direct_attention_at_every_level_for_gqa_windows_head_dims_and_prefixes() {
        // (heads, kv heads, head dim, window, past, t): odd lengths, key
        // tiles cut by windows, GQA ratios 1–7, head dims 12–128.
        let cases = [
            (4, 2, 8, None, 0, 150),
            (4, 2, 8, Some(17), 0, 150),
            (4, 2, 8, None, 40, 110),
            (4, 2, 8, Some(33), 40, 110),
            (4, 4, 12, Some(70), 0, 201),
            (9, 3, 64, None, 0, 257),
            (9, 3, 64, Some(100), 63, 300),
            (14, 2, 64, None, 130, 131),
            (7, 7, 80, Some(65), 1, 190),
            (8, 2, 128, None, 65, 200),
            (2, 1, 96, Some(1), 0, 77),
            (3, 1, 16, None, 0, 1),
        ];
        for (h, kv, hd, window, past, t) in cases {
            let c = Case::new(h, kv, hd, window, past, t);
            let want = c.reference();
            for level in levels() {
                let got = c.run(level, past);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 2e-6 + 1e-5 * b.abs(),
                        "{level:?} {h}/{kv}×{hd} {window:?} past {past} t {t} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_query_row_gets_the_same_bits_whatever_prefix_is_cached_or_call_length() {
        for (h, kv, hd, window) in [
            (4, 2, 16, None),
            (4, 2, 16, Some(21)),
            (9, 3, 64, Some(90)),
            (6, 1, 80, None),
        ] {
            let c = Case::new(h, kv, hd, window, 0, 230);
            let qd = c.qd();
            for level in levels() {
                let full = c.run(level, 0);
                for past in [1usize, 8, 16, 40, 63, 64, 70, 129, 200, 229] {
                    let part = c.run(level, past);
                    assert!(
                        part.iter()
                            .zip(&full[past * qd..])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{level:?} {h}/{kv}×{hd} {window:?} past {past}"
                    );
                }
                // Calls that end earlier (a shorter sequence) and start
                // anywhere give their rows the same bits too.
                for (from, to) in [(0usize, 1usize), (0, 65), (5, 6), (30, 97), (128, 192)] {
                    let short = Case {
                        t: to,
                        ..Case::new(h, kv, hd, window, 0, 230)
                    };
                    let part = short.run(level, from);
                    assert!(
                        part.iter()
                            .zip(&full[from * qd..to * qd])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{level:?} {h}/{kv}×{hd} {window:?} rows {from}..{to}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_avx2_tile_gives_the_bits_of_the_avx512_tile() {
        if crate::simd::detected() < Level::Avx512 {
            return; // nothing to compare on this CPU
        }
        for (h, kv, hd, window) in [
            (4, 2, 16, None),
            (9, 3, 64, Some(90)),
            (8, 2, 128, None),
            (7, 7, 80, Some(65)),
        ] {
            let c = Case::new(h, kv, hd, window, 0, 170);
            let (a, b) = (c.run(Level::Avx2, 0), c.run(Level::Avx512, 0));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{h}/{kv}×{hd} {window:?}"
            );
        }
    }

    /// The bf16 levels this CPU runs: (level, native `vdpbf16ps`).
    fn bf16_levels() -> Vec<(Level, bool)> {
        let mut l: Vec<(Level, bool)> = levels().into_iter().map(|l| (l, false)).collect();
        if crate::simd::has_avx512_bf16() {
            l.push((Level::Avx512, true));
        }
        l
    }

    #[test]
    fn the_bf16_tile_is_attention_on_bf16_inputs_with_bf16_probabilities() {
        // Against the f64 reference on Q, K, V rounded to bf16: what is left
        // is P's rounding for P·V (2⁻⁹ relative per weight, |v| ≤ 0.5: the
        // output moves by at most ~1e-3) and f32 sums. The reference on the
        // unrounded inputs is farther on average (a silent f32 run is not).
        let cases = [
            (4, 2, 8, None, 0, 150),
            (4, 2, 8, Some(33), 40, 110),
            (4, 4, 12, Some(70), 0, 201),
            (9, 3, 64, None, 0, 257),
            (9, 3, 64, Some(100), 63, 300),
            (7, 7, 80, Some(65), 1, 190),
            (8, 2, 128, None, 65, 200),
            (3, 1, 15, None, 0, 70),
            (3, 1, 16, None, 0, 1),
        ];
        for (h, kv, hd, window, past, t) in cases {
            let c = Case::new(h, kv, hd, window, past, t);
            let (want, exact) = (c.rounded().reference(), c.reference());
            for (level, native) in bf16_levels() {
                let got = c.run_bf16(level, native, past);
                let at =
                    format!("{level:?} native {native} {h}/{kv}×{hd} {window:?} past {past} t {t}");
                let (mut to_rounded, mut to_exact) = (0.0f64, 0.0f64);
                for (i, ((a, b), e)) in got.iter().zip(&want).zip(&exact).enumerate() {
                    assert!((a - b).abs() < 2e-3, "{at} [{i}]: {a} vs {b}");
                    to_rounded += (a - b).abs() as f64;
                    to_exact += (a - e).abs() as f64;
                }
                assert!(
                    t < 2 || to_rounded < to_exact,
                    "{at}: {to_rounded} vs {to_exact}"
                );
            }
        }
    }

    #[test]
    fn the_emulated_bf16_tile_gives_the_instructions_bits_and_prefixes_change_none() {
        for (h, kv, hd, window) in [
            (4, 2, 16, None),
            (9, 3, 64, Some(90)),
            (8, 2, 128, None),
            (7, 7, 80, Some(65)),
            (3, 1, 15, None),
        ] {
            let c = Case::new(h, kv, hd, window, 0, 170);
            let qd = c.qd();
            let mut fused = Vec::new(); // the levels with fused multiply-adds
            for (level, native) in bf16_levels() {
                let full = c.run_bf16(level, native, 0);
                if level >= Level::Avx2 {
                    fused.push((level, native, full.clone()));
                }
                for past in [1usize, 16, 63, 64, 129] {
                    let part = c.run_bf16(level, native, past);
                    assert!(
                        part.iter()
                            .zip(&full[past * qd..])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{level:?} native {native} {h}/{kv}×{hd} {window:?} past {past}"
                    );
                }
            }
            // vdpbf16ps and its emulation at AVX2 and AVX-512: the same bits.
            for w in fused.windows(2) {
                let ((l0, n0, a), (l1, n1, b)) = (&w[0], &w[1]);
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{l0:?}/{n0} vs {l1:?}/{n1}: {h}/{kv}×{hd} {window:?}"
                );
            }
        }
    }
}
