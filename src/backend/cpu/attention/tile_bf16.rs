//! The attention tile of the CPU's bf16 mode (`--compute-dtype bf16`):
//! [`super::tile`]'s algorithm with both products on bf16 pairs.
//!
//! What changes against the f32 tile: `S = Q·Kᵀ` and `O += P·V` run on
//! `vdpbf16ps` (two bf16 products per f32 lane, accumulated in f32), so Q, K,
//! V and the softmax numerators P are rounded to bf16 (nearest, ties to
//! even, [`bf16_bits`]) for the products; the scale, the masks, the running
//! max, the exponentials and the row sums `l` stay f32 (`l` sums the
//! unrounded P, as FlashAttention and padv's CUDA kernel do). K and V are
//! rounded and packed once per call and KV head ([`Packed`]): Kᵀ tiles as
//! pairs along the head dim, V tiles as pairs along the keys, so a task
//! reads them as it reads the f32 tile's packed Kᵀ.
//!
//! Exactness is the f32 tile's: key tiles anchored at position 0, a row's
//! arithmetic independent of its neighbours, so a cached prefix changes no
//! bits. Without AVX512-BF16 the products run in f32 lanes with the
//! instruction's arithmetic (`acc = ftz(ftz(acc + a₁b₁) + a₀b₀)`: each
//! product of two bf16 is exact in f32, each sum rounded once, results
//! below f32's smallest normal flushed; `gemm_bf16`'s emulation): the same
//! bits on every CPU, checked against the instruction by
//! `the_emulated_tile_gives_the_instructions_bits`.

use rayon::prelude::*;

use super::tile::{
    Call, DC, KT, Lanes, PSink, Plain, Rows, lanes_of, load_o, online_softmax, reset_rows, store_o,
    write_out,
};
use crate::backend::cpu::gemm_bf16::bf16_bits;

/// Lanes that also take bf16 pair products.
pub(super) trait Dot: Lanes {
    /// 16 pairs, as loaded.
    type Pairs: Copy;
    /// # Safety
    /// `p` holds 16 pairs.
    unsafe fn pairs(p: *const u32) -> Self::Pairs;
    /// Per lane `self + a₁b₁ + a₀b₀` with `vdpbf16ps`'s roundings (`a`
    /// broadcast to every lane).
    fn dot(self, a: u32, b: Self::Pairs) -> Self;
    /// The 16 lanes as bf16 bits ([`bf16_bits`] of finite values).
    ///
    /// # Safety
    /// `p` has room for 16 values.
    unsafe fn store_bf16(self, p: *mut u16);
}

/// `x` with a result below f32's smallest normal flushed to a signed zero.
#[inline(always)]
fn ftz(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// One lane of `vdpbf16ps`: `ftz(ftz(acc + a₁b₁) + a₀b₀)` (the pair's high
/// halves first; products exact).
#[inline(always)]
fn dot1(acc: f32, a: u32, b: u32) -> f32 {
    let hi = |x: u32| f32::from_bits(x & 0xffff_0000);
    let lo = |x: u32| f32::from_bits(x << 16);
    let s = ftz(acc + hi(a) * hi(b));
    ftz(s + lo(a) * lo(b))
}

impl<const FUSED: bool> Dot for Plain<FUSED> {
    type Pairs = [u32; 16];
    #[inline(always)]
    unsafe fn pairs(p: *const u32) -> [u32; 16] {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::read_unaligned(p as *const [u32; 16]) }
    }
    #[inline(always)]
    fn dot(self, a: u32, b: [u32; 16]) -> Self {
        let mut x = self;
        for (l, &bl) in b.iter().enumerate() {
            x.0[l] = dot1(x.0[l], a, bl);
        }
        x
    }
    #[inline(always)]
    unsafe fn store_bf16(self, p: *mut u16) {
        for (l, &x) in self.0.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *p.add(l) = bf16_bits(x) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod native {
    use std::arch::x86_64::*;

    use super::super::tile::avx512::Zmm;
    use super::Dot;

    // SAFETY (every method): inlined only into functions compiled with
    // AVX-512 F/BW and AVX512-BF16 (`super::super::run_task_bf16` checks).
    impl Dot for Zmm {
        type Pairs = __m512i;
        #[inline(always)]
        unsafe fn pairs(p: *const u32) -> __m512i {
            unsafe { _mm512_loadu_si512(p as *const _) }
        }
        #[inline(always)]
        fn dot(self, a: u32, b: __m512i) -> Self {
            unsafe {
                let a = _mm512_set1_epi32(a as i32);
                Zmm(_mm512_dpbf16_ps(
                    self.0,
                    std::mem::transmute::<__m512i, __m512bh>(a),
                    std::mem::transmute::<__m512i, __m512bh>(b),
                ))
            }
        }
        #[inline(always)]
        unsafe fn store_bf16(self, p: *mut u16) {
            // `vcvtneps2bf16`: nearest-even, a denormal input becomes a
            // signed zero, never MXCSR-dependent: `bf16_bits` on every
            // non-NaN value (the lanes are softmax numerators).
            unsafe {
                let h = _mm512_cvtneps_pbh(self.0);
                _mm256_storeu_si256(
                    p as *mut __m256i,
                    std::mem::transmute::<__m256bh, __m256i>(h),
                );
            }
        }
    }
}

/// P as bf16 (`[MR][KT]`), the bf16 tile's.
#[derive(Clone, Copy)]
struct PBf16(*mut u16);

impl<V: Dot> PSink<V> for PBf16 {
    #[inline(always)]
    unsafe fn put(self, i: usize, v: usize, p: V) {
        // SAFETY: the caller's contract.
        unsafe { p.store_bf16(self.0.add(i * KT + v * 16)) }
    }
}

/// K and V of one call packed for the bf16 tile, per KV head `g` and key
/// tile `t` (keys `[KT·t, KT·(t+1))`, zero past the keys and the head dim):
/// `Kᵀ` as `[hp][KT]` pairs along the head dim (`hp = ⌈hd/2⌉`), `V` as
/// `[KT/2][hv]` pairs along the keys (`hv`: head dim rounded up to 16).
pub(super) struct Packed {
    k: Vec<u32>,
    v: Vec<u32>,
    tiles: usize,
    pub hp: usize,
    pub hv: usize,
}

fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

impl Packed {
    /// Round and pack `c`'s K and V (every KV head, every key tile, in
    /// parallel).
    pub fn new(c: &Call) -> Packed {
        let sh = c.shape;
        let (hd, nkv) = (sh.head_dim, sh.num_kv_heads);
        let kv_len = c.past + c.q_len;
        let tiles = kv_len.div_ceil(KT);
        let (hp, hv) = (hd.div_ceil(2), hd.next_multiple_of(16));
        let (kn, vn) = (hp * KT, KT / 2 * hv);
        let mut k = vec![0u32; nkv * tiles * kn];
        let mut v = vec![0u32; nkv * tiles * vn];
        let (kp, vp) = (c.k as usize, c.v as usize);
        let (ks, vs) = (c.k_stride, c.v_stride);
        k.par_chunks_mut(kn)
            .zip(v.par_chunks_mut(vn))
            .enumerate()
            .for_each(|(gt, (kt, vt))| {
                let (g, t) = (gt / tiles, gt % tiles);
                let k0 = t * KT;
                let n = KT.min(kv_len - k0);
                let at = |base: usize, stride: usize, j: usize, d: usize| -> f32 {
                    if d >= hd {
                        return 0.0;
                    }
                    // SAFETY: key k0 + j < kv_len and g·hd + d < the row's
                    // stride (checked by `super::attention_bf16`).
                    unsafe { *(base as *const f32).add((k0 + j) * stride + g * hd + d) }
                };
                for j in 0..n {
                    for dp in 0..hp {
                        kt[dp * KT + j] = pair(at(kp, ks, j, 2 * dp), at(kp, ks, j, 2 * dp + 1));
                    }
                }
                for jp in 0..n.div_ceil(2) {
                    let j = 2 * jp;
                    for d in 0..hd {
                        let hi = if j + 1 < n { at(vp, vs, j + 1, d) } else { 0.0 };
                        vt[jp * hv + d] = pair(at(vp, vs, j, d), hi);
                    }
                }
            });
        Packed {
            k,
            v,
            tiles,
            hp,
            hv,
        }
    }

    /// Packed `Kᵀ` of (`g`, `t`).
    fn k(&self, g: usize, t: usize) -> *const u32 {
        let n = self.hp * KT;
        self.k[(g * self.tiles + t) * n..].as_ptr()
    }

    /// Packed `V` of (`g`, `t`).
    fn v(&self, g: usize, t: usize) -> *const u32 {
        let n = KT / 2 * self.hv;
        self.v[(g * self.tiles + t) * n..].as_ptr()
    }
}

/// Per-thread scratch of the bf16 tile.
#[derive(Default)]
pub(super) struct Scratch {
    /// The task's query rows as pairs, `[n_rows][hp]`.
    q: Vec<u32>,
    /// A micro-tile's P as bf16, `[MR][KT]`.
    p: Vec<u16>,
    o: Vec<f32>,
    l: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    pub(super) static SCRATCH: std::cell::RefCell<Scratch> =
        std::cell::RefCell::new(Scratch::default());
}

/// Run task (`kv head g`, query positions `[p0, p1)` of the call) with
/// lanes `V` and micro-tiles of `MR ≤ 6` rows over the packed `pk`.
///
/// # Safety
/// As `super::tile::task`; `pk` is `c`'s.
#[inline(always)]
pub(super) unsafe fn task<V: Dot, const MR: usize>(
    c: &Call,
    pk: &Packed,
    s: &mut Scratch,
    g: usize,
    p0: usize,
    p1: usize,
) {
    const { assert!(MR >= 1 && MR <= 6) };
    let hd = c.shape.head_dim;
    let kv_len = c.past + c.q_len;
    let rows = Rows::of(c, g, p0);
    let n_rows = (p1 - p0) * rows.group;
    let hp = pk.hp;
    s.q.clear();
    for r in 0..n_rows {
        // SAFETY: row r's query holds hd values.
        let q = unsafe { std::slice::from_raw_parts(c.q.add(rows.offset(r)), hd) };
        for dp in 0..hp {
            let hi = q.get(2 * dp + 1).copied().unwrap_or(0.0);
            s.q.push(pair(q[2 * dp], hi));
        }
    }
    s.p.resize(MR * KT, 0);
    reset_rows((&mut s.o, &mut s.l, &mut s.m), n_rows, hd);
    let (t_first, t_last) = (rows.lo(0) / KT, rows.abs(n_rows - 1) / KT);
    let (mut ra, mut rb) = (0, 0);
    for t in t_first..=t_last {
        let k0 = t * KT;
        let nkeys = KT.min(kv_len - k0);
        while ra < n_rows && rows.abs(ra) < k0 {
            ra += 1;
        }
        while rb < n_rows && rows.lo(rb) < k0 + KT {
            rb += 1;
        }
        let tile = (pk.k(g, t), pk.v(g, t));
        let mut r0 = ra;
        while r0 < rb {
            let n = MR.min(rb - r0);
            // SAFETY: rows r0..r0+n see tile t; the scratch holds them.
            unsafe {
                match n {
                    n if n == MR => micro::<V, MR>(c, pk, tile, s, rows, r0, k0, nkeys),
                    1 => micro::<V, 1>(c, pk, tile, s, rows, r0, k0, nkeys),
                    2 => micro::<V, 2>(c, pk, tile, s, rows, r0, k0, nkeys),
                    3 => micro::<V, 3>(c, pk, tile, s, rows, r0, k0, nkeys),
                    4 => micro::<V, 4>(c, pk, tile, s, rows, r0, k0, nkeys),
                    _ => micro::<V, 5>(c, pk, tile, s, rows, r0, k0, nkeys),
                }
            }
            r0 += n;
        }
    }
    // SAFETY: the task's rows lie in `out`; this task owns them.
    unsafe { write_out(c, rows, n_rows, &s.o, &s.l) }
}

/// One micro-tile of rows `r0..r0+R` against key tile `[k0, k0 + KT)`.
///
/// # Safety
/// As [`task`]; the rows exist and see the tile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<V: Dot, const R: usize>(
    c: &Call,
    pk: &Packed,
    (kt, vt): (*const u32, *const u32),
    s: &mut Scratch,
    rows: Rows,
    r0: usize,
    k0: usize,
    nkeys: usize,
) {
    const NK: usize = KT / 16;
    let (hd, hp) = (c.shape.head_dim, pk.hp);
    // S = Q·Kᵀ on pairs of the head dim, in order.
    let mut acc = [[V::zero(); NK]; R];
    let q = s.q.as_ptr();
    for dp in 0..hp {
        let mut kv = [unsafe { V::pairs(kt.add(dp * KT)) }; NK];
        for (v, x) in kv.iter_mut().enumerate().skip(1) {
            // SAFETY: the packed tile holds hp·KT pairs.
            *x = unsafe { V::pairs(kt.add(dp * KT + v * 16)) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: the task's rows hold hp pairs each.
            let a = unsafe { *q.add((r0 + i) * hp + dp) };
            for v in 0..NK {
                row[v] = row[v].dot(a, kv[v]);
            }
        }
    }
    // Online softmax as in the f32 tile; P rounded to bf16 for P·V, the
    // sums of the unrounded P.
    let sink = PBf16(s.p.as_mut_ptr());
    // SAFETY: the rows exist; the P scratch holds MR·KT values.
    let (alpha, last) = unsafe {
        online_softmax(
            &mut acc,
            c.shape.scale,
            rows,
            r0,
            k0,
            &mut s.m,
            &mut s.l,
            sink,
        )
    };
    // Pairs of keys: a pair's second key past `last` has P = 0 in every row.
    let pairs = last.min(nkeys).div_ceil(2);
    let mut d0 = 0;
    while d0 < hd {
        let w = DC.min(hd - d0);
        // SAFETY: as above.
        unsafe {
            match (w.div_ceil(16), w.is_multiple_of(16)) {
                (4, true) => pv::<V, R, 4, true>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (4, false) => pv::<V, R, 4, false>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (3, true) => pv::<V, R, 3, true>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (3, false) => pv::<V, R, 3, false>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (2, true) => pv::<V, R, 2, true>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (2, false) => pv::<V, R, 2, false>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (_, true) => pv::<V, R, 1, true>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
                (_, false) => pv::<V, R, 1, false>(c, vt, pk.hv, s, r0, pairs, d0, w, &alpha),
            }
        }
        d0 += w;
    }
}

/// `O[rows, d0..d0+w] ← α·O + P·V` over `pairs` key pairs of the packed V
/// tile (`hv` pairs a row), `NV` vectors per row.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv<V: Dot, const R: usize, const NV: usize, const FULL: bool>(
    c: &Call,
    vt: *const u32,
    hv: usize,
    s: &mut Scratch,
    r0: usize,
    pairs: usize,
    d0: usize,
    w: usize,
    alpha: &[f32; R],
) {
    let at = (r0, c.shape.head_dim, d0);
    let n_of = lanes_of::<NV, FULL>(w);
    let op = s.o.as_mut_ptr();
    // P as pairs of keys (two consecutive bf16 per u32).
    let pp = s.p.as_ptr() as *const u32;
    // SAFETY: rows r0..r0+R hold hd values of O; P holds R·KT bf16 (read as
    // unaligned u32 pairs); the V tile KT/2 rows of hv pairs.
    unsafe {
        let mut acc = load_o::<V, R, NV>(op, at, &n_of, alpha);
        for jp in 0..pairs {
            let vr = vt.add(jp * hv + d0);
            let mut vv = [V::pairs(vr); NV];
            for (v, x) in vv.iter_mut().enumerate().skip(1) {
                *x = V::pairs(vr.add(v * 16));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let a = pp.add(i * KT / 2 + jp).read_unaligned();
                for v in 0..NV {
                    row[v] = row[v].dot(a, vv[v]);
                }
            }
        }
        store_o(&acc, op, at, &n_of);
    }
}
