//! The attention tile: one (KV head, 64-query block) task, fused with an
//! online softmax (FlashAttention-2 on the CPU).
//!
//! What is fused: for each key tile of [`KT`] keys, `S = Q·Kᵀ` for a
//! micro-tile of up to `MR` query rows is kept in registers, masked
//! (causal, window), turned into `P = exp(S − m)` with the row's running max
//! `m`, and `O ← α·O + P·V` is accumulated with `α = exp(m_old − m_new)`; the
//! running sum `l` is kept in 16 lanes. Only the row states (`m`, `l`, `O`)
//! and one packed `Kᵀ` tile live in memory (L1/L2); nothing of size `T²`.
//!
//! GQA: a task's rows are every query head of the KV head's group at each of
//! the block's positions, so each K/V tile is packed and read once for the
//! whole group.
//!
//! Exactness: key tiles are anchored at absolute position 0 (`[KT·t,
//! KT·(t+1))`), and a row visits exactly the tiles holding its visible keys
//! (from `lo/KT` to `i/KT`), in order. Every lane of a row's arithmetic
//! (dot products in head-dim order, the exponentials, the 16 sum lanes, the
//! `P·V` chains in key order, the final lane sum) depends only on the row,
//! its keys and that tile order: not on how many rows share its micro-tile
//! or where the call starts. So a cached prefix changes no bits. (Keys past
//! a micro-tile's last visible one are skipped, earlier masked keys add
//! `0·v`: exact for finite `v`.)
//!
//! Levels ([`crate::simd`]): `avx512` runs the algorithm on `__m512`
//! registers; `avx2` and `portable` on `[f32; 16]` lanes compiled with those
//! target features (fused multiply-adds at `avx2`, so its bits equal
//! AVX-512's; split multiply and add on x86-64's baseline).

use std::cell::RefCell;

use super::AttnShape;

/// Keys per tile of the online softmax (four 16-lane vectors).
pub(super) const KT: usize = 64;
/// Query positions per task, aligned to absolute positions.
pub(super) const Q_BLOCK: usize = 64;
/// Head-dim values per pass of `P·V` (four vectors).
pub(super) const DC: usize = 64;

/// One attention call's operands (see `super::attention`).
#[derive(Clone, Copy)]
pub(super) struct Call {
    pub q: *const f32, // [q_len, heads·hd]
    pub k: *const f32, // [kv_len, k_stride] (this call's KV head at g·hd)
    pub k_stride: usize,
    pub v: *const f32, // [kv_len, v_stride]
    pub v_stride: usize,
    pub out: *mut f32, // [q_len, heads·hd]
    pub past: usize,
    pub q_len: usize,
    pub shape: AttnShape,
}

// SAFETY: the pointers are read-only except `out`, whose rows each task
// writes disjointly (a task owns its block's rows of its group's heads).
unsafe impl Send for Call {}
unsafe impl Sync for Call {}

/// 16 lanes of f32 with the operations the tile needs.
pub(super) trait Lanes: Copy {
    fn zero() -> Self;
    fn splat(x: f32) -> Self;
    /// # Safety
    /// `p` holds `n ≤ 16` values (lanes past `n` read as 0).
    unsafe fn load(p: *const f32, n: usize) -> Self;
    /// # Safety
    /// `p` holds `n ≤ 16` values.
    unsafe fn store(self, p: *mut f32, n: usize);
    /// `a·b + c` (fused where the level fuses).
    fn fma(a: Self, b: Self, c: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn max(self, b: Self) -> Self;
    fn reduce_max(self) -> f32;
    /// Lanes `lo ≤ l < hi` kept, the others set to `fill`.
    fn keep(self, lo: isize, hi: isize, fill: f32) -> Self;
    /// `e^x` per lane: the arithmetic of [`exp1`].
    fn exp(self) -> Self;
}

/// `e^x` as `crate::score::fused::fast_exp` computes it (Cephes
/// polynomial), with ties of `n` rounded to even so that the AVX-512 round
/// instruction gives the same `n`; `FUSED` picks fused or split
/// multiply-adds.
#[inline(always)]
pub(super) fn exp1<const FUSED: bool>(x: f32) -> f32 {
    let fma = |a: f32, b: f32, c: f32| if FUSED { a.mul_add(b, c) } else { a * b + c };
    // max/min rather than clamp: a NaN becomes −87, as `_mm512_max_ps` does.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    // Round to nearest even by the 1.5·2²³ shift (|x·log₂e| < 2²²): the
    // AVX-512 round instruction's result, and no libm call on SSE2.
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = fma(n, -0.693_145_75, x);
    let r = fma(n, -1.428_606_8e-6, r);
    let mut p = 1.987_569_1e-4_f32;
    p = fma(p, r, 1.398_199_9e-3);
    p = fma(p, r, 8.333_452e-3);
    p = fma(p, r, 4.166_579_6e-2);
    p = fma(p, r, 1.666_666_5e-1);
    p = fma(p, r, 0.5);
    let p = fma(p * r, r, r) + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `[f32; 16]` lanes for the `avx2` (`FUSED`) and `portable` levels.
#[derive(Clone, Copy)]
pub(super) struct Plain<const FUSED: bool>(pub [f32; 16]);

impl<const FUSED: bool> Plain<FUSED> {
    #[inline(always)]
    fn map2(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Plain(std::array::from_fn(|l| f(self.0[l], b.0[l])))
    }
}

impl<const FUSED: bool> Lanes for Plain<FUSED> {
    #[inline(always)]
    fn zero() -> Self {
        Plain([0.0; 16])
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Plain([x; 16])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, n: usize) -> Self {
        // SAFETY (both): the caller's contract. (No `copy_nonoverlapping`
        // of a variable length: that is a `memcpy` call per vector.)
        if n >= 16 {
            return Plain(unsafe { std::ptr::read_unaligned(p as *const [f32; 16]) });
        }
        let mut v = [0.0; 16];
        for (l, x) in v.iter_mut().enumerate().take(n) {
            *x = unsafe { *p.add(l) };
        }
        Plain(v)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, n: usize) {
        // SAFETY (both): the caller's contract.
        if n >= 16 {
            return unsafe { std::ptr::write_unaligned(p as *mut [f32; 16], self.0) };
        }
        for (l, &x) in self.0.iter().enumerate().take(n) {
            unsafe { *p.add(l) = x };
        }
    }
    #[inline(always)]
    fn fma(a: Self, b: Self, c: Self) -> Self {
        Plain(std::array::from_fn(|l| {
            if FUSED {
                a.0[l].mul_add(b.0[l], c.0[l])
            } else {
                a.0[l] * b.0[l] + c.0[l]
            }
        }))
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        self.map2(b, |x, y| x * y)
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        self.map2(b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        self.map2(b, |x, y| x - y)
    }
    #[inline(always)]
    fn max(self, b: Self) -> Self {
        self.map2(b, f32::max)
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        self.0.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    fn keep(self, lo: isize, hi: isize, fill: f32) -> Self {
        Plain(std::array::from_fn(|l| {
            let l = l as isize;
            if l >= lo && l < hi {
                self.0[l as usize]
            } else {
                fill
            }
        }))
    }
    #[inline(always)]
    fn exp(self) -> Self {
        Plain(std::array::from_fn(|l| exp1::<FUSED>(self.0[l])))
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::Lanes;

    /// One `__m512` register.
    #[derive(Clone, Copy)]
    pub struct Zmm(pub __m512);

    /// Lanes `[lo, hi)` of 16 as a mask (bounds clipped).
    #[inline(always)]
    fn range_mask(lo: isize, hi: isize) -> u16 {
        let (lo, hi) = (lo.clamp(0, 16) as u32, hi.clamp(0, 16) as u32);
        let below = |n: u32| ((1u32 << n) - 1) as u16;
        below(hi) & !below(lo)
    }

    // SAFETY (every method): these run only inlined into functions compiled
    // with AVX-512 F (`super::super::run` checks the level first).
    impl Lanes for Zmm {
        #[inline(always)]
        fn zero() -> Self {
            unsafe { Zmm(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            unsafe { Zmm(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, n: usize) -> Self {
            unsafe {
                if n >= 16 {
                    Zmm(_mm512_loadu_ps(p))
                } else {
                    Zmm(_mm512_maskz_loadu_ps(range_mask(0, n as isize), p))
                }
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, n: usize) {
            unsafe {
                if n >= 16 {
                    _mm512_storeu_ps(p, self.0)
                } else {
                    _mm512_mask_storeu_ps(p, range_mask(0, n as isize), self.0)
                }
            }
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { Zmm(_mm512_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            unsafe { Zmm(_mm512_mul_ps(self.0, b.0)) }
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            unsafe { Zmm(_mm512_add_ps(self.0, b.0)) }
        }
        #[inline(always)]
        fn sub(self, b: Self) -> Self {
            unsafe { Zmm(_mm512_sub_ps(self.0, b.0)) }
        }
        #[inline(always)]
        fn max(self, b: Self) -> Self {
            unsafe { Zmm(_mm512_max_ps(self.0, b.0)) }
        }
        #[inline(always)]
        fn reduce_max(self) -> f32 {
            unsafe { _mm512_reduce_max_ps(self.0) }
        }
        #[inline(always)]
        fn keep(self, lo: isize, hi: isize, fill: f32) -> Self {
            unsafe {
                Zmm(_mm512_mask_mov_ps(
                    _mm512_set1_ps(fill),
                    range_mask(lo, hi),
                    self.0,
                ))
            }
        }
        #[inline(always)]
        fn exp(self) -> Self {
            // The arithmetic of `super::exp1::<true>`, lane by lane.
            unsafe {
                let x = _mm512_min_ps(
                    _mm512_max_ps(self.0, _mm512_set1_ps(-87.0)),
                    _mm512_set1_ps(88.0),
                );
                let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
                );
                let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_145_75), x);
                let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-1.428_606_8e-6), r);
                let mut p = _mm512_set1_ps(1.987_569_1e-4);
                for c in [
                    1.398_199_9e-3,
                    8.333_452e-3,
                    4.166_579_6e-2,
                    1.666_666_5e-1,
                    0.5,
                ] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
                }
                let p = _mm512_add_ps(
                    _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
                    _mm512_set1_ps(1.0),
                );
                let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
                    _mm512_cvtps_epi32(n),
                    _mm512_set1_epi32(127),
                ));
                Zmm(_mm512_mul_ps(p, _mm512_castsi512_ps(bits)))
            }
        }
    }
}

/// Per-thread scratch: the packed `Kᵀ` tile, a micro-tile's `P`, and the
/// row states.
#[derive(Default)]
pub(super) struct Scratch {
    kt: Vec<f32>,
    p: Vec<f32>,
    o: Vec<f32>,
    l: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    pub(super) static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The rows of one task: row `r` is query position `p0 + r / group`, head
/// `g·group + r % group`. (Plain methods, no closures: a closure would be
/// compiled without the caller's target features.)
#[derive(Clone, Copy)]
pub(super) struct Rows {
    pub past: usize,
    pub p0: usize,
    pub group: usize,
    pub g: usize,
    pub hd: usize,
    pub qd: usize,
    pub window: Option<usize>,
}

impl Rows {
    /// The rows of task (`kv head g`, query positions from `p0`) of `c`.
    pub fn of(c: &Call, g: usize, p0: usize) -> Rows {
        let sh = c.shape;
        Rows {
            past: c.past,
            p0,
            group: sh.num_heads / sh.num_kv_heads,
            g,
            hd: sh.head_dim,
            qd: sh.num_heads * sh.head_dim,
            window: sh.window,
        }
    }
    /// The absolute position of row `r`.
    #[inline(always)]
    pub fn abs(self, r: usize) -> usize {
        self.past + self.p0 + r / self.group
    }
    /// Its first visible key.
    #[inline(always)]
    pub fn lo(self, r: usize) -> usize {
        match self.window {
            Some(w) => (self.abs(r) + 1).saturating_sub(w),
            None => 0,
        }
    }
    /// The offset of its query (and output) row in `[q_len, heads·hd]`.
    #[inline(always)]
    pub fn offset(self, r: usize) -> usize {
        (self.p0 + r / self.group) * self.qd + (self.g * self.group + r % self.group) * self.hd
    }
}

/// Run task (`kv head g`, query positions `[p0, p1)` of the call) with lanes
/// `V` and micro-tiles of `MR ≤ 6` rows.
///
/// # Safety
/// `c` describes valid buffers (checked by `super::attention`); tasks that
/// run concurrently have distinct (`g`, block) pairs.
#[inline(always)]
pub(super) unsafe fn task<V: Lanes, const MR: usize>(
    c: &Call,
    s: &mut Scratch,
    g: usize,
    p0: usize,
    p1: usize,
) {
    const { assert!(MR >= 1 && MR <= 6) };
    let AttnShape {
        num_heads,
        num_kv_heads,
        head_dim: hd,
        ..
    } = c.shape;
    let group = num_heads / num_kv_heads;
    let kv_len = c.past + c.q_len;
    let n_rows = (p1 - p0) * group;
    let rows = Rows::of(c, g, p0);
    s.kt.resize(hd * KT, 0.0);
    s.p.resize(MR * KT, 0.0);
    reset_rows((&mut s.o, &mut s.l, &mut s.m), n_rows, hd);
    let (t_first, t_last) = (rows.lo(0) / KT, rows.abs(n_rows - 1) / KT);
    // Rows are in position order, so `lo` and `abs` never decrease and the
    // rows that see tile t form one range [ra, rb).
    let (mut ra, mut rb) = (0, 0);
    for t in t_first..=t_last {
        let k0 = t * KT;
        let nkeys = KT.min(kv_len - k0);
        // Kᵀ tile: kt[d·KT + j] = K[k0 + j, g·hd + d], zero past the keys.
        for j in 0..KT {
            for d in 0..hd {
                s.kt[d * KT + j] = if j < nkeys {
                    // SAFETY: k0 + j < kv_len rows; g·hd + d < k_stride.
                    unsafe { *c.k.add((k0 + j) * c.k_stride + g * hd + d) }
                } else {
                    0.0
                };
            }
        }
        while ra < n_rows && rows.abs(ra) < k0 {
            ra += 1;
        }
        while rb < n_rows && rows.lo(rb) < k0 + KT {
            rb += 1;
        }
        let mut r0 = ra;
        while r0 < rb {
            let n = MR.min(rb - r0);
            // SAFETY: rows r0..r0+n see tile t (the range above); the
            // scratch holds hd·KT, MR·KT and the rows' states.
            unsafe {
                match n {
                    n if n == MR => micro::<V, MR>(c, s, rows, r0, k0, nkeys),
                    1 => micro::<V, 1>(c, s, rows, r0, k0, nkeys),
                    2 => micro::<V, 2>(c, s, rows, r0, k0, nkeys),
                    3 => micro::<V, 3>(c, s, rows, r0, k0, nkeys),
                    4 => micro::<V, 4>(c, s, rows, r0, k0, nkeys),
                    _ => micro::<V, 5>(c, s, rows, r0, k0, nkeys),
                }
            }
            r0 += n;
        }
    }
    // SAFETY: the task's rows lie in `out`; this task owns them.
    unsafe { write_out(c, rows, n_rows, &s.o, &s.l) }
}

/// A task's running state, fresh for `n_rows` rows of `hd` values: O at
/// zero, the 16 sum lanes of l at zero, the running max m at −∞.
pub(super) fn reset_rows(
    (o, l, m): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    n_rows: usize,
    hd: usize,
) {
    for (v, len, x) in [
        (o, n_rows * hd, 0.0),
        (l, n_rows * 16, 0.0),
        (m, n_rows, f32::NEG_INFINITY),
    ] {
        v.clear();
        v.resize(len, x);
    }
}

/// Where [`online_softmax`] puts a micro-tile's P: `put(i, v, p)` stores
/// lanes `16·v …` of row `i`.
pub(super) trait PSink<V>: Copy {
    /// # Safety
    /// Row `i < R` and vector `v < KT/16` lie in the sink's scratch.
    unsafe fn put(self, i: usize, v: usize, p: V);
}

/// P as f32 (`[MR][KT]`), the f32 tile's.
#[derive(Clone, Copy)]
pub(super) struct PF32(pub *mut f32);

impl<V: Lanes> PSink<V> for PF32 {
    #[inline(always)]
    unsafe fn put(self, i: usize, v: usize, p: V) {
        // SAFETY: the caller's contract.
        unsafe { p.store(self.0.add(i * KT + v * 16), 16) }
    }
}

/// The online softmax of a micro-tile's scores `acc` (rows `r0..r0+R`,
/// keys `[k0, k0 + KT)`): scale, mask (causal, window), raise each row's
/// running max `m`, `P = exp(S − m)` into `sink`, the 16 sum lanes of `l`
/// rescaled and added to. Returns each row's `α = exp(m_old − m_new)` and
/// how many keys from `k0` reach some row.
///
/// # Safety
/// The rows exist; `m` holds one value and `l` 16 lanes per row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn online_softmax<V: Lanes, const R: usize>(
    acc: &mut [[V; KT / 16]; R],
    scale: f32,
    rows: Rows,
    r0: usize,
    k0: usize,
    m: &mut [f32],
    l: &mut [f32],
    sink: impl PSink<V>,
) -> ([f32; R], usize) {
    let mut last = 0; // keys [k0, k0 + last) reach some row
    let scale = V::splat(scale);
    // Scale and mask every row, raising its running max; then the rows'
    // rescale factors α = exp(m_old − m_new) as one vector exponential
    // (the arithmetic of `exp1` lane by lane: the same bits as one scalar
    // exponential per row, at a fraction of the instructions).
    let mut step = [0.0f32; 16];
    let mut m_new = [0.0f32; R];
    for (i, row) in acc.iter_mut().enumerate() {
        let r = r0 + i;
        let (a, lo) = (rows.abs(r) as isize, rows.lo(r) as isize);
        let mut vmax = V::splat(f32::NEG_INFINITY);
        for (v, x) in row.iter_mut().enumerate() {
            let base = (k0 + v * 16) as isize;
            *x = x
                .mul(scale)
                .keep(lo - base, a + 1 - base, f32::NEG_INFINITY);
            vmax = vmax.max(*x);
        }
        m_new[i] = m[r].max(vmax.reduce_max());
        step[i] = m[r] - m_new[i];
        last = last.max((a + 1) as usize - k0);
    }
    let mut alpha16 = [0.0f32; 16];
    // SAFETY: both arrays hold 16 values.
    unsafe {
        V::load(step.as_ptr(), R)
            .exp()
            .store(alpha16.as_mut_ptr(), R)
    };
    let alpha: [f32; R] = std::array::from_fn(|i| alpha16[i]);
    for (i, row) in acc.iter().enumerate() {
        let r = r0 + i;
        let (a, lo) = (rows.abs(r) as isize, rows.lo(r) as isize);
        m[r] = m_new[i];
        let mb = V::splat(m_new[i]);
        // SAFETY: `l` holds 16 lanes per row; the sink row i exists.
        unsafe {
            let lp = l.as_mut_ptr().add(r * 16);
            let mut lsum = V::load(lp, 16).mul(V::splat(alpha[i]));
            for (v, x) in row.iter().enumerate() {
                let base = (k0 + v * 16) as isize;
                let p = x.sub(mb).exp().keep(lo - base, a + 1 - base, 0.0);
                lsum = lsum.add(p);
                sink.put(i, v, p);
            }
            lsum.store(lp, 16);
        }
    }
    (alpha, last)
}

/// Lanes of each of `NV` vectors covering `w` head-dim values (`FULL`: 16).
#[inline(always)]
pub(super) fn lanes_of<const NV: usize, const FULL: bool>(w: usize) -> [usize; NV] {
    std::array::from_fn(|v| {
        if FULL {
            16
        } else {
            (w - (v * 16).min(w)).min(16)
        }
    })
}

/// `α·O` of rows `r0..r0+R`, head dims `d0 …` (`n_of` lanes per vector).
///
/// # Safety
/// `o` holds `hd` values per row for those rows.
#[inline(always)]
pub(super) unsafe fn load_o<V: Lanes, const R: usize, const NV: usize>(
    o: *const f32,
    (r0, hd, d0): (usize, usize, usize),
    n_of: &[usize; NV],
    alpha: &[f32; R],
) -> [[V; NV]; R] {
    let mut acc = [[V::zero(); NV]; R];
    for (i, row) in acc.iter_mut().enumerate() {
        let a = V::splat(alpha[i]);
        for (v, x) in row.iter_mut().enumerate() {
            // SAFETY: the caller's contract.
            *x = unsafe { V::load(o.add((r0 + i) * hd + d0 + v * 16), n_of[v]) }.mul(a);
        }
    }
    acc
}

/// Store what [`load_o`] loaded, updated.
///
/// # Safety
/// As [`load_o`].
#[inline(always)]
pub(super) unsafe fn store_o<V: Lanes, const R: usize, const NV: usize>(
    acc: &[[V; NV]; R],
    o: *mut f32,
    (r0, hd, d0): (usize, usize, usize),
    n_of: &[usize; NV],
) {
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { x.store(o.add((r0 + i) * hd + d0 + v * 16), n_of[v]) };
        }
    }
}

/// `out = O / l` for a task's rows, the 16 sum lanes added in lane order.
///
/// # Safety
/// `o` holds `hd` and `l` 16 values per row; the rows lie in `c.out` and
/// the task owns them.
pub(super) unsafe fn write_out(c: &Call, rows: Rows, n_rows: usize, o: &[f32], l: &[f32]) {
    let hd = c.shape.head_dim;
    for r in 0..n_rows {
        let sum: f32 = l[r * 16..(r + 1) * 16].iter().sum();
        let inv = 1.0 / sum;
        let out = rows.offset(r);
        for (d, &x) in o[r * hd..(r + 1) * hd].iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *c.out.add(out + d) = x * inv };
        }
    }
}

/// One micro-tile: rows `r0..r0+R` (each seeing at least one key of the
/// tile at `k0`) take key tile `[k0, k0 + KT)` into their states.
///
/// # Safety
/// As [`task`]; the rows exist and see the tile.
#[inline(always)]
unsafe fn micro<V: Lanes, const R: usize>(
    c: &Call,
    s: &mut Scratch,
    rows: Rows,
    r0: usize,
    k0: usize,
    nkeys: usize,
) {
    const NK: usize = KT / 16;
    let hd = c.shape.head_dim;
    // S = Q·Kᵀ: one chain per lane over the head dim, in order.
    let mut acc = [[V::zero(); NK]; R];
    let mut qp = [c.q; R];
    for (i, p) in qp.iter_mut().enumerate() {
        // SAFETY: row r0 + i exists.
        *p = unsafe { c.q.add(rows.offset(r0 + i)) };
    }
    let kt = s.kt.as_ptr();
    for d in 0..hd {
        let mut kv = [V::zero(); NK];
        for (v, x) in kv.iter_mut().enumerate() {
            // SAFETY: the packed tile holds hd·KT values.
            *x = unsafe { V::load(kt.add(d * KT + v * 16), 16) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: a query row holds hd values.
            let qb = V::splat(unsafe { *qp[i].add(d) });
            for v in 0..NK {
                row[v] = V::fma(qb, kv[v], row[v]);
            }
        }
    }
    let sink = PF32(s.p.as_mut_ptr());
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
    let keys = last.min(nkeys);
    // O ← α·O + P·V, DC head-dim values at a time, keys in order.
    let mut d0 = 0;
    while d0 < hd {
        let w = DC.min(hd - d0);
        let col = rows.g * hd + d0;
        // SAFETY: as above; V rows k0..k0+keys exist.
        unsafe {
            match (w.div_ceil(16), w.is_multiple_of(16)) {
                (4, true) => pv::<V, R, 4, true>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (4, false) => pv::<V, R, 4, false>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (3, true) => pv::<V, R, 3, true>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (3, false) => pv::<V, R, 3, false>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (2, true) => pv::<V, R, 2, true>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (2, false) => pv::<V, R, 2, false>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (_, true) => pv::<V, R, 1, true>(c, s, r0, k0, keys, col, d0, w, &alpha),
                (_, false) => pv::<V, R, 1, false>(c, s, r0, k0, keys, col, d0, w, &alpha),
            }
        }
        d0 += w;
    }
}

/// `O[rows, d0..d0+w] ← α·O + P·V[k0..k0+keys, col..col+w]` with `NV`
/// vectors per row (`FULL`: all of 16 values, no tail to mask).
///
/// # Safety
/// As [`micro`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv<V: Lanes, const R: usize, const NV: usize, const FULL: bool>(
    c: &Call,
    s: &mut Scratch,
    r0: usize,
    k0: usize,
    keys: usize,
    col: usize,
    d0: usize,
    w: usize,
    alpha: &[f32; R],
) {
    let at = (r0, c.shape.head_dim, d0);
    let n_of = lanes_of::<NV, FULL>(w);
    let op = s.o.as_mut_ptr();
    let pp = s.p.as_ptr();
    // SAFETY: rows r0..r0+R hold hd values of O; P holds R·KT values; key
    // k0 + j < kv_len and col + w ≤ the KV row.
    unsafe {
        let mut acc = load_o::<V, R, NV>(op, at, &n_of, alpha);
        for j in 0..keys {
            let vr = c.v.add((k0 + j) * c.v_stride + col);
            let mut vv = [V::zero(); NV];
            for (v, x) in vv.iter_mut().enumerate() {
                *x = V::load(vr.add(v * 16), n_of[v]);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let pb = V::splat(*pp.add(i * KT + j));
                for v in 0..NV {
                    row[v] = V::fma(pb, vv[v], row[v]);
                }
            }
        }
        store_o(&acc, op, at, &n_of);
    }
}
