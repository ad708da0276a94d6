//! The GEMM in bf16 compute mode (`--compute-dtype bf16` on the CPU):
//! `C = bf16(A) · bf16(W)ᵀ` with products accumulated in f32 by
//! `vdpbf16ps` (AVX512-BF16), twice the multiply-adds per instruction of
//! the f32 kernel (`super::gemm`).
//!
//! Numerics. Activations are rounded to bf16 (nearest, ties to even) once
//! per GEMM call, row by row ([`Lhs::new`]); weights are taken as stored when
//! bf16 and rounded the same way otherwise, while packing. Inputs whose
//! exponent is zero (denormals) become signed zeros, as the instruction
//! treats them. Per element of C, one chain over each block of `2·KP` depths,
//! in k order, pair by pair: `acc = (acc + a₁b₁) + a₀b₀` (odd element first,
//! each sum rounded to f32, results below f32's smallest normal flushed to
//! zero) — exactly what `vdpbf16ps` does (Intel's pseudo-code; checked
//! bitwise on Zen 4 by the tests below). Products of two bf16 are exact in
//! f32, so the same chain written with f32 multiplies and adds gives the same
//! bits: that is the path of CPUs without AVX512-BF16 (the emulation,
//! slower), so a result never depends on the machine. The block's sum is
//! then added to C, as the f32 kernels do. Odd `k` is padded with a zero.
//! A row's bits never depend on how many rows share the call.
//!
//! Layout: A as `[rows][⌈k/2⌉]` u32 (two bf16: even depth in the low half);
//! a weight tile packed as panels `[kp][NR]` of such pairs (`NR` = 32
//! columns, two zmm); the AVX-512 micro-kernel keeps a 14 × 32 block of C in
//! 28 zmm registers and broadcasts one pair of A per row (`vpbroadcastd`),
//! the f32 kernel's structure with the pair in place of the float.

use super::gemm::{NC, NR, for_each_tile, give_back_scratch, take_scratch, tile_product};
use crate::backend::profile::{self, Part};
use crate::model::weights::{Data, Tensor};

/// Rows of C per micro-kernel call (the f32 kernel's).
const MR: usize = 14;
/// Depth pairs per packed block: a panel `[KP][NR]` of u32 is 24 KB (L1),
/// as the f32 kernel's `[KC][NR]` of f32.
const KP: usize = 192;

/// The arithmetic of the CPU's weight GEMMs (and the LM head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gemm {
    /// f32 inputs, f32 fused multiply-adds (the exact path).
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation (`vdpbf16ps`, or its emulation).
    Bf16,
}

impl Gemm {
    pub fn name(self) -> &'static str {
        match self {
            Gemm::F32 => "f32",
            Gemm::Bf16 => "bf16",
        }
    }

    /// Whether this CPU runs the mode's own instruction (bf16 without
    /// AVX512-BF16 is emulated: the same numbers, slower).
    pub fn native(self) -> bool {
        match self {
            Gemm::F32 => true,
            Gemm::Bf16 => crate::simd::has_avx512_bf16(),
        }
    }

    /// `out[t, n] (+)= Σ_k x[t, k] · w[n, k]` for `t < rows` in this mode
    /// (`x` is `[rows, k]`, `out` has row stride `ldo ≥ n`); see
    /// [`super::gemm::matmul_wt`].
    pub fn matmul_wt(
        self,
        x: &[f32],
        rows: usize,
        w: &Tensor,
        out: &mut [f32],
        ldo: usize,
        accumulate: bool,
    ) {
        match self {
            Gemm::F32 => super::gemm::matmul_wt(x, rows, w, out, ldo, accumulate),
            Gemm::Bf16 => {
                let _span = profile::span(Part::Gemm);
                let (n, k) = (w.rows(), w.cols());
                if rows == 0 || n == 0 {
                    return;
                }
                assert!(
                    x.len() >= rows * k,
                    "matmul: x has {} < {rows}×{k}",
                    x.len()
                );
                assert!(out.len() >= (rows - 1) * ldo + n, "matmul: out too small");
                let lhs = Lhs::new(self, x, rows, k);
                for_each_tile(rows, n, out, ldo, MR, |t0, t1, c0, c1, c| {
                    lhs.tile_product(t0, t1 - t0, w.data, c0, c1 - c0, c, ldo, accumulate)
                });
            }
        }
    }
}

/// The left operand of a series of tile products, prepared once for the
/// mode: f32 rows as they are, or rounded to bf16 pairs.
pub enum Lhs<'a> {
    F32 { x: &'a [f32], k: usize },
    Bf16 { pairs: Vec<u32>, k: usize },
}

impl<'a> Lhs<'a> {
    /// `x`: `[rows, k]`, row stride `k`.
    pub fn new(gemm: Gemm, x: &'a [f32], rows: usize, k: usize) -> Lhs<'a> {
        match gemm {
            Gemm::F32 => Lhs::F32 { x, k },
            Gemm::Bf16 => {
                let k2 = k.div_ceil(2);
                let mut pairs = vec![0u32; rows * k2];
                for (row, out) in x[..rows * k]
                    .chunks_exact(k)
                    .zip(pairs.chunks_exact_mut(k2))
                {
                    round_row(row, out);
                }
                Lhs::Bf16 { pairs, k }
            }
        }
    }

    /// `C[0..m, 0..nc] (+)= X[r0..r0+m, 0..k] · W[n0..n0+nc, 0..k]ᵀ`.
    #[allow(clippy::too_many_arguments)]
    pub fn tile_product(
        &self,
        r0: usize,
        m: usize,
        w: Data,
        n0: usize,
        nc: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        match self {
            Lhs::F32 { x, k } => {
                tile_product(&x[r0 * k..], *k, m, *k, w, n0, nc, c, ldc, accumulate)
            }
            Lhs::Bf16 { pairs, k } => {
                let k2 = k.div_ceil(2);
                tile_product_bf16(&pairs[r0 * k2..], m, *k, w, n0, nc, c, ldc, accumulate)
            }
        }
    }
}

/// The bf16 bits of `v`: nearest, ties to even; a denormal or zero becomes
/// a signed zero; NaN stays NaN (quietened).
#[inline(always)]
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let sign = ((b >> 16) & 0x8000) as u16;
    let nan = ((b >> 16) | 0x0040) as u16;
    if b & 0x7f80_0000 == 0 {
        sign
    } else if v.is_nan() {
        nan
    } else {
        rounded
    }
}

/// A stored bf16 with denormals made signed zeros (as the instruction reads it).
#[inline(always)]
fn flush(h: u16) -> u16 {
    if h & 0x7f80 == 0 { h & 0x8000 } else { h }
}

crate::dispatch! {
    /// Round a row of `k` floats into `⌈k/2⌉` pairs (odd `k`: a zero last).
    fn round_row(x: &[f32], out: &mut [u32]) {
        let full = x.len() / 2;
        for (o, p) in out[..full].iter_mut().zip(x.chunks_exact(2)) {
            *o = bf16_bits(p[0]) as u32 | (bf16_bits(p[1]) as u32) << 16;
        }
        if x.len() % 2 == 1 {
            out[full] = bf16_bits(x[x.len() - 1]) as u32;
        }
    }
}

/// Pack weight rows `[n0, n0 + nc)`, depth pairs `[p0, p0 + kp)`, into
/// panels `[nc/NR][kp][NR]` of bf16 pairs (zero-padded columns and depth).
#[allow(clippy::too_many_arguments)]
fn pack(w: Data, k: usize, n0: usize, nc: usize, p0: usize, kp: usize, bp: &mut [u32]) {
    let mut row = [0.0f32; 2 * KP];
    let d0 = 2 * p0;
    let depth = (2 * kp).min(k - d0);
    for (q, panel) in bp
        .chunks_exact_mut(kp * NR)
        .take(nc.div_ceil(NR))
        .enumerate()
    {
        for c0 in [0, 16] {
            // Pairs [0, done) of these 16 columns packed in registers.
            let done = pack16(
                w,
                k,
                n0 + q * NR + c0,
                nc.saturating_sub(q * NR + c0),
                p0,
                kp,
                &mut panel[c0..],
            );
            for col in c0..c0 + 16 {
                let j = q * NR + col;
                if j >= nc {
                    for p in 0..kp {
                        panel[p * NR + col] = 0;
                    }
                    continue;
                }
                let at = (n0 + j) * k + d0 + 2 * done;
                let depth = depth - 2 * done;
                let mut put = |p: usize, lo: u16, hi: u16| {
                    panel[(done + p) * NR + col] = lo as u32 | (hi as u32) << 16;
                };
                match w {
                    Data::BF16(s) => {
                        for (p, v) in s[at..at + depth].chunks(2).enumerate() {
                            let hi = v.get(1).map_or(0, |h| flush(h.to_bits()));
                            put(p, flush(v[0].to_bits()), hi);
                        }
                    }
                    _ => {
                        w.widen_into(at, &mut row[..depth]);
                        for (p, v) in row[..depth].chunks(2).enumerate() {
                            let hi = v.get(1).map_or(0, |&h| bf16_bits(h));
                            put(p, bf16_bits(v[0]), hi);
                        }
                    }
                }
            }
        }
    }
}

/// Pack 16 stored-bf16 weight rows from `r0` (when `rows ≥ 16`) into the
/// panel columns at `panel[0..16]` in 16 × 16 blocks of pairs: each row's
/// pairs are its raw memory, so a block is one 32-bit transpose in
/// registers (the f32 packer's), with denormals flushed. Returns the pairs
/// done (a multiple of 16 inside the row; the rest is the caller's).
fn pack16(
    w: Data,
    k: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kp: usize,
    panel: &mut [u32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Data::BF16(s) = w
        && rows >= 16
        && crate::simd::level() == crate::simd::Level::Avx512
    {
        // Whole groups of 16 pairs that lie inside every row.
        let full = kp.min(k / 2 - p0.min(k / 2)) / 16 * 16;
        assert!(s.len() >= (r0 + 16) * k && panel.len() >= (full.max(1) - 1) * NR + 16);
        // SAFETY: AVX-512 (the level); rows r0..r0+16 hold depth
        // 2·(p0 + full) ≤ k (asserted), the panel (kp, NR) rows of 16.
        unsafe {
            avx512bf16::pack16(
                s.as_ptr() as *const u16,
                k,
                r0,
                p0,
                full,
                panel.as_mut_ptr(),
            )
        };
        return full;
    }
    let _ = (w, k, r0, rows, p0, kp, panel);
    0
}

/// Single-threaded `C[0..m, 0..nc] (+)= A · W[n0..n0+nc, 0..k]ᵀ` with `A`
/// given as `m` rows of `⌈k/2⌉` bf16 pairs (row stride `⌈k/2⌉`).
#[allow(clippy::too_many_arguments)]
pub fn tile_product_bf16(
    a: &[u32],
    m: usize,
    k: usize,
    w: Data,
    n0: usize,
    nc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    tile_product_at(
        crate::simd::has_avx512_bf16(),
        a,
        m,
        k,
        w,
        n0,
        nc,
        c,
        ldc,
        accumulate,
    )
}

/// [`tile_product_bf16`] through the instruction (`native`, the CPU must
/// have it) or its emulation.
#[allow(clippy::too_many_arguments)]
fn tile_product_at(
    native: bool,
    a: &[u32],
    m: usize,
    k: usize,
    w: Data,
    n0: usize,
    nc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || nc == 0 {
        return;
    }
    let k2 = k.div_ceil(2);
    assert!(a.len() >= m * k2, "tile_product_bf16: A too small");
    assert!(
        c.len() >= (m - 1) * ldc + nc,
        "tile_product_bf16: C too small"
    );
    assert!(w.len() >= (n0 + nc) * k, "tile_product_bf16: W too small");
    assert!(
        !native || crate::simd::has_avx512_bf16(),
        "vdpbf16ps on this CPU"
    );
    let panels = nc.div_ceil(NR);
    let nkb = k2.div_ceil(KP).max(1);
    let kp_len = k2.div_ceil(nkb);
    // The f32 path's per-thread packing buffer, as u32 pairs (`pack`
    // writes every element it hands out, padding included).
    let mut scratch = take_scratch(panels * kp_len * NR);
    let bp: &mut [u32] = bytemuck::cast_slice_mut(&mut scratch[..panels * kp_len * NR]);
    for kb in 0..nkb {
        let p0 = kb * kp_len;
        let kp = kp_len.min(k2 - p0);
        pack(w, k, n0, nc, p0, kp, bp);
        let load_c = accumulate || kb > 0;
        for q in 0..panels {
            let cols = (nc - q * NR).min(NR);
            let panel = &bp[q * kp * NR..(q + 1) * kp * NR];
            let mut r0 = 0;
            while r0 < m {
                let r = (m - r0).min(MR);
                let ap = &a[r0 * k2 + p0..];
                let cp = &mut c[r0 * ldc + q * NR..];
                #[cfg(target_arch = "x86_64")]
                if native {
                    // SAFETY: the CPU has AVX512-BF16 (asserted); rows
                    // r0..r0+r of A (stride k2, kp pairs from p0) and of C
                    // (stride ldc, cols columns from q·NR) are in bounds by
                    // the asserts above, the panel holds kp rows of NR.
                    unsafe {
                        avx512bf16::block(
                            r,
                            kp,
                            ap.as_ptr(),
                            k2,
                            panel.as_ptr(),
                            cp.as_mut_ptr(),
                            ldc,
                            cols,
                            load_c,
                        )
                    };
                    r0 += r;
                    continue;
                }
                emulated(r, kp, ap, k2, panel, cp, ldc, cols, load_c);
                r0 += r;
            }
        }
    }
    give_back_scratch(scratch);
}

/// `f32` of the high / low bf16 of a pair.
#[inline(always)]
fn hi(p: u32) -> f32 {
    f32::from_bits(p & 0xffff_0000)
}
#[inline(always)]
fn lo(p: u32) -> f32 {
    f32::from_bits(p << 16)
}

/// A result below the smallest normal f32 becomes a signed zero.
#[inline(always)]
fn ftz(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

crate::dispatch! {
    /// `vdpbf16ps` in f32 arithmetic for a block of `r ≤ MR` rows and `cols`
    /// columns of one panel: per element, `acc = ftz(ftz(acc + a₁b₁) + a₀b₀)`
    /// over the block, then `C = acc (+ C)`.
    #[allow(clippy::too_many_arguments)]
    fn emulated(
        r: usize,
        kp: usize,
        a: &[u32],
        lda: usize,
        panel: &[u32],
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        load_c: bool,
    ) {
        for i in 0..r {
            let arow = &a[i * lda..i * lda + kp];
            let mut acc = [0.0f32; NR];
            for (&ap, b) in arow.iter().zip(panel.chunks_exact(NR)) {
                let (a1, a0) = (hi(ap), lo(ap));
                for (x, &bp) in acc.iter_mut().zip(b) {
                    let s = ftz(*x + a1 * hi(bp));
                    *x = ftz(s + a0 * lo(bp));
                }
            }
            let out = &mut c[i * ldc..i * ldc + cols];
            for (o, &v) in out.iter_mut().zip(&acc) {
                *o = if load_c { v + *o } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `r ≤ MR` rows × `cols ≤ NR` columns: the full tile in assembly,
    /// edges with intrinsics.
    ///
    /// # Safety
    /// AVX512-BF16; `a` holds `r` rows of `kp` pairs at stride `lda`, `bp`
    /// `kp` rows of `NR` pairs, `c` `r` rows of `cols` floats at stride `ldc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        r: usize,
        kp: usize,
        a: *const u32,
        lda: usize,
        bp: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        load_c: bool,
    ) {
        if r == MR && cols == NR && kp > 0 {
            // SAFETY: forwarded.
            return unsafe { full(kp, a, lda, bp, c, ldc, load_c) };
        }
        let mask = |n: usize| if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        // SAFETY: forwarded.
        unsafe {
            match r {
                1 => edge::<1>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                2 => edge::<2>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                3 => edge::<3>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                4 => edge::<4>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                5 => edge::<5>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                6 => edge::<6>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                7 => edge::<7>(kp, a, lda, bp, c, ldc, m0, m1, load_c),
                _ => {
                    edge::<7>(kp, a, lda, bp, c, ldc, m0, m1, load_c);
                    block(
                        r - 7,
                        kp,
                        a.add(7 * lda),
                        lda,
                        bp,
                        c.add(7 * ldc),
                        ldc,
                        cols,
                        load_c,
                    )
                }
            }
        }
    }

    /// Rows `r0..r0+16` of a bf16 matrix (`k` columns), pairs
    /// `[p0, p0 + full)`, into `panel[p·NR + i]` (pair p, row i).
    ///
    /// # Safety
    /// AVX-512 F/BW; the rows hold those pairs, the panel `full` rows of NR.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack16(
        s: *const u16,
        k: usize,
        r0: usize,
        p0: usize,
        full: usize,
        panel: *mut u32,
    ) {
        use crate::backend::cpu::gemm::transpose16;
        let exp = _mm512_set1_epi16(0x7f80);
        let sign = _mm512_set1_epi16(i16::MIN);
        for g in (0..full).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                // SAFETY: 32 bf16 of row r0 + i from depth 2·(p0 + g).
                let x =
                    unsafe { _mm512_loadu_si512(s.add((r0 + i) * k + 2 * (p0 + g)) as *const _) };
                // Exponent zero (denormal or zero): keep the sign only.
                let normal = _mm512_test_epi16_mask(x, exp);
                let x = _mm512_mask_blend_epi16(normal, _mm512_and_si512(x, sign), x);
                *v = _mm512_castsi512_ps(x);
            }
            transpose16(&mut r);
            for (p, v) in r.iter().enumerate() {
                // SAFETY: pair g + p < full, columns 0..16 of the panel row.
                unsafe { _mm512_storeu_ps(panel.add((g + p) * NR) as *mut f32, *v) };
            }
        }
    }

    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn edge<const R: usize>(
        kp: usize,
        a: *const u32,
        lda: usize,
        bp: *const u32,
        c: *mut f32,
        ldc: usize,
        mask0: u16,
        mask1: u16,
        load_c: bool,
    ) {
        unsafe {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            for p in 0..kp {
                let b0 = bh(_mm512_loadu_si512(bp.add(p * NR) as *const _));
                let b1 = bh(_mm512_loadu_si512(bp.add(p * NR + 16) as *const _));
                for i in 0..R {
                    let av = bh(_mm512_set1_epi32(*a.add(i * lda + p) as i32));
                    acc0[i] = _mm512_dpbf16_ps(acc0[i], av, b0);
                    acc1[i] = _mm512_dpbf16_ps(acc1[i], av, b1);
                }
            }
            crate::backend::cpu::gemm::store_masked(&acc0, &acc1, c, ldc, mask0, mask1, load_c);
        }
    }

    /// The 14 × 32 tile: the f32 kernel's asm loop with `vpbroadcastd` of
    /// a pair and `vdpbf16ps` ([`crate::backend::cpu::gemm::tile_14x32`]).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn full(
        kp: usize,
        a: *const u32,
        lda: usize,
        bp: *const u32,
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        use crate::backend::cpu::gemm::{store_14x32, tile_14x32};
        // SAFETY: forwarded from `block` (14 rows of kp pairs at stride lda,
        // kp panel rows of 32 pairs, 14 rows of 32 floats of C).
        unsafe {
            let acc = tile_14x32!("vpbroadcastd", "vdpbf16ps", a, lda, bp, kp);
            store_14x32(&acc, c, ldc, load_c);
        }
    }
}

/// The f64 product of the bf16-rounded operands, the reference of the tests.
pub fn matmul_wt_bf16_reference(x: &[f32], rows: usize, w: &Tensor) -> Vec<f64> {
    let (n, k) = (w.rows(), w.cols());
    let r = |v: f32| f32::from_bits((bf16_bits(v) as u32) << 16) as f64;
    let wf: Vec<f64> = w.data.to_f32_vec().into_iter().map(r).collect();
    let mut out = vec![0.0; rows * n];
    for t in 0..rows {
        for j in 0..n {
            out[t * n + j] = (0..k).map(|i| r(x[t * k + i]) * wf[j * k + i]).sum();
        }
    }
    out
}

/// NC is the tile width of the drivers; the packing assumes whole panels.
const _: () = assert!(NC.is_multiple_of(NR));

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(rows: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..rows * k)
            .map(|i| ((i * 7919) % 997) as f32 / 97.0 - 5.0)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 104729) % 887) as f32 / 8.9e3 - 0.05)
            .collect();
        (x, w)
    }

    #[test]
    fn bf16_products_match_the_f64_product_of_the_rounded_inputs() {
        for (rows, n, k) in [(37, 600, 72), (1, 33, 5), (15, 129, 401), (30, 70, 900)] {
            let (x, wf) = inputs(rows, n, k);
            let wb: Vec<half::bf16> = wf.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let wh: Vec<half::f16> = wf.iter().map(|&v| half::f16::from_f32(v)).collect();
            let shape = [n, k];
            for data in [Data::F32(&wf), Data::BF16(&wb), Data::F16(&wh)] {
                let t = Tensor {
                    name: "w",
                    shape: &shape,
                    data,
                };
                let want = matmul_wt_bf16_reference(&x, rows, &t);
                let ld = n + 3;
                let mut got = vec![1.0; rows * ld];
                Gemm::Bf16.matmul_wt(&x, rows, &t, &mut got, ld, true);
                // f32 accumulation of exact products: each of the k sums
                // rounds by at most 2⁻²⁴ of the running |sum| ≤ Σ|products|.
                for r in 0..rows {
                    let scale: f64 = (0..n).map(|j| want[r * n + j].abs()).fold(1.0, f64::max);
                    for c in 0..ld {
                        let g = got[r * ld + c] as f64 - 1.0;
                        let w = if c < n { want[r * n + c] } else { 0.0 };
                        assert!(
                            (g - w).abs() <= 1e-6 * k as f64 * scale * 20.0,
                            "{rows}x{n}x{k} {r},{c}: {g} vs {w}"
                        );
                    }
                }
                // And it is not the f32 product: the rounding of x shows.
                let f = crate::backend::cpu::gemm::matmul_wt_reference(&x, rows, &t);
                let moved = f
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| (**a as f64 - **b).abs() > 1e-4);
                assert!(moved.count() > rows * n / 4, "bf16 rounding did not show");
            }
        }
    }

    /// The emulation gives the instruction's bits (where the CPU has it), and
    /// a row's bits do not depend on the rows sharing the call.
    #[test]
    fn the_emulation_gives_the_instructions_bits_in_any_batch() {
        let (rows, n, k) = (37, 70, 901);
        let (mut x, wf) = inputs(rows, n, k);
        let mut wb: Vec<half::bf16> = wf.iter().map(|&v| half::bf16::from_f32(v)).collect();
        // Denormal inputs (read as zeros by the instruction) on both sides.
        (x[5], x[k + 8]) = (1e-39, -3e-40);
        (wb[3], wb[k + 17]) = (half::bf16::from_bits(0x0001), half::bf16::from_bits(0x8042));
        let data = Data::BF16(&wb);
        let lhs = Lhs::new(Gemm::Bf16, &x, rows, k);
        let Lhs::Bf16 { pairs, .. } = &lhs else {
            unreachable!()
        };
        let k2 = k.div_ceil(2);
        let mut ways = vec![false];
        if crate::simd::has_avx512_bf16() {
            ways.push(true);
        } else {
            eprintln!("no AVX512-BF16 here: the emulation alone is checked");
        }
        let mut first: Option<Vec<f32>> = None;
        for native in ways {
            let mut all = vec![0.0; rows * n];
            tile_product_at(native, pairs, rows, k, data, 0, n, &mut all, n, false);
            for (start, len) in [(0, 1), (5, 3), (13, 14), (30, 7), (36, 1)] {
                let mut part = vec![0.0; len * n];
                let a = &pairs[start * k2..];
                tile_product_at(native, a, len, k, data, 0, n, &mut part, n, false);
                let same = part
                    .iter()
                    .zip(&all[start * n..])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "native {native}: rows {start}..+{len} alone differ");
            }
            match &first {
                Some(f) => {
                    let diff = f
                        .iter()
                        .zip(&all)
                        .filter(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(diff.count(), 0, "emulation and vdpbf16ps differ");
                }
                None => first = Some(all),
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_flushes_denormals() {
        // Ties: 1 + 2⁻⁸ rounds down to 1, 1 + 3·2⁻⁸ up to 1 + 2⁻⁶ (even).
        const T1: f32 = f32::from_bits(0x3f80_8000);
        const T2: f32 = f32::from_bits(0x3f81_8000);
        for v in [1.0f32, -3.5, 1e30, 65504.0, T1, T2, 2e-38, 3e38] {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        assert_eq!(bf16_bits(1e-39), 0);
        assert_eq!(bf16_bits(-1e-40), 0x8000);
        assert!(half::bf16::from_bits(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }
}
