//! The weight GEMM below the AVX-512 level (`crate::simd`): the arithmetic of
//! the AVX-512 micro-kernel written as plain loops that the compiler
//! vectorises at the level's width. Per element of C: one chain of
//! multiply-adds over each block of k (the same `KC`-deep blocks, in k
//! order), then the block's sum added to C. So, as with AVX-512, a row's
//! result never depends on how many rows are multiplied with it (a cached
//! prefix changes no bits), and at the `avx2` level, where the chain is fused
//! (FMA), the bits are those of the AVX-512 kernel. The `portable` level
//! (x86-64's baseline has no FMA) multiplies and adds separately.

use super::gemm::{KC, NR, give_back_scratch, take_scratch};
use crate::model::weights::Data;

/// Rows of C per kernel call.
const MR: usize = 4;
/// Columns of C per kernel call (a strip of the `NR`-wide packed panel: two
/// SSE registers per row, so 4 rows of accumulators fit the 16 of x86-64).
const W: usize = 8;

/// `C[0..R, 0..cols] (+)= A[0..R, 0..kc] · Bp` for a strip of `cols ≤ W`
/// columns of one packed panel `[kc][NR]` (`bp` points at the strip).
///
/// # Safety
/// `a` holds `R` rows of `kc` values at stride `lda`, `bp` `kc` rows of
/// `W` values at stride `NR`, `c` `R` rows of `cols` values at stride `ldc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize, const FUSED: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    load_c: bool,
) {
    let mut acc = [[0.0f32; W]; R];
    for kk in 0..kc {
        // SAFETY: kk < kc rows of the strip.
        let b = unsafe { &*(bp.add(kk * NR) as *const [f32; W]) };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: r < R rows, kk < kc columns of A.
            let av = unsafe { *a.add(r * lda + kk) };
            for (x, &bv) in row.iter_mut().zip(b) {
                *x = if FUSED {
                    av.mul_add(bv, *x)
                } else {
                    av * bv + *x
                };
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: r < R rows of C with `cols` valid values each.
        unsafe { store_row(c.add(r * ldc), row, cols, load_c) };
    }
}

/// `C[0..cols] = v (+ C)`: how every kernel ends a row (the block's sum
/// added to C, as the AVX-512 kernel does).
///
/// # Safety
/// `c` holds `cols ≤ v.len()` values.
#[inline(always)]
unsafe fn store_row(c: *mut f32, v: &[f32], cols: usize, load_c: bool) {
    // SAFETY: forwarded from the caller.
    let out = unsafe { std::slice::from_raw_parts_mut(c, cols) };
    for (o, &x) in out.iter_mut().zip(v) {
        *o = if load_c { x + *o } else { x };
    }
}

/// [`kernel`] for `r ≤ MR` rows, fused or not.
///
/// # Safety
/// As [`kernel`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn plain(
    fused: bool,
    r: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    load_c: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (fused, r) {
            (true, 4) => kernel::<4, true>(kc, a, lda, bp, c, ldc, cols, load_c),
            (true, 3) => kernel::<3, true>(kc, a, lda, bp, c, ldc, cols, load_c),
            (true, 2) => kernel::<2, true>(kc, a, lda, bp, c, ldc, cols, load_c),
            (true, _) => kernel::<1, true>(kc, a, lda, bp, c, ldc, cols, load_c),
            (false, 4) => kernel::<4, false>(kc, a, lda, bp, c, ldc, cols, load_c),
            (false, 3) => kernel::<3, false>(kc, a, lda, bp, c, ldc, cols, load_c),
            (false, 2) => kernel::<2, false>(kc, a, lda, bp, c, ldc, cols, load_c),
            (false, _) => kernel::<1, false>(kc, a, lda, bp, c, ldc, cols, load_c),
        }
    }
}

/// Widen weight rows `[n0, n0 + nc)`, depth `[k0, k0 + kc)`, into panels
/// `[nc/NR][kc][NR]` (zero-padded columns).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack(w: Data, k: usize, n0: usize, nc: usize, k0: usize, kc: usize, bp: &mut [f32]) {
    let mut row = [0.0f32; KC];
    for (q, panel) in bp
        .chunks_exact_mut(kc * NR)
        .take(nc.div_ceil(NR))
        .enumerate()
    {
        for col in 0..NR {
            let j = q * NR + col;
            if j < nc {
                w.widen_into((n0 + j) * k + k0, &mut row[..kc]);
                for (kk, &v) in row[..kc].iter().enumerate() {
                    panel[kk * NR + col] = v;
                }
            } else {
                for kk in 0..kc {
                    panel[kk * NR + col] = 0.0;
                }
            }
        }
    }
}

/// Which kernel the driver runs: the plain-loop one (fused or not), or the
/// AVX2 intrinsics one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Split,
    Fused,
    Avx2,
}

/// `C[0..m, 0..nc] (+)= A[0..m, 0..k] · W[n0..n0+nc, 0..k]ᵀ` (bounds asserted
/// by the caller, `gemm::tile_product`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_product<const KIND: u8>(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    w: Data,
    n0: usize,
    nc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let kind = [Kind::Split, Kind::Fused, Kind::Avx2][KIND as usize];
    let (rows, strip) = if kind == Kind::Avx2 { (6, 16) } else { (MR, W) };
    let panels = nc.div_ceil(NR);
    let nkb = k.div_ceil(KC);
    let kc_len = k.div_ceil(nkb);
    let mut scratch = take_scratch(panels * kc_len * NR);
    let bp = &mut scratch[..panels * kc_len * NR];
    for kb in 0..nkb {
        let k0 = kb * kc_len;
        let kc = kc_len.min(k - k0);
        pack(w, k, n0, nc, k0, kc, bp);
        let load_c = accumulate || kb > 0;
        for q in 0..panels {
            let cols = (nc - q * NR).min(NR);
            for p0 in (0..m).step_by(rows) {
                let r = (m - p0).min(rows);
                let ap = a[p0 * lda + k0..].as_ptr();
                for s0 in (0..cols).step_by(strip) {
                    let (bp, cp) = (
                        bp[q * kc * NR + s0..].as_ptr(),
                        c[p0 * ldc + q * NR + s0..].as_mut_ptr(),
                    );
                    let n = (cols - s0).min(strip);
                    // SAFETY: rows p0..p0+r of A and C are in bounds (asserted
                    // by the caller); the strip lies inside the packed panel.
                    unsafe {
                        match kind {
                            #[cfg(target_arch = "x86_64")]
                            Kind::Avx2 => avx2::kernel(r, kc, ap, lda, bp, cp, ldc, n, load_c),
                            #[cfg(target_arch = "x86_64")]
                            Kind::Split => sse2::kernel(r, kc, ap, lda, bp, cp, ldc, n, load_c),
                            _ => plain(kind == Kind::Fused, r, kc, ap, lda, bp, cp, ldc, n, load_c),
                        }
                    }
                }
            }
        }
    }
    give_back_scratch(scratch);
}

/// The `avx2` level: 256-bit vectors, fused multiply-adds.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the bounds of `gemm::tile_product` hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_product_avx2(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    w: Data,
    n0: usize,
    nc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    tile_product::<2>(a, lda, m, k, w, n0, nc, c, ldc, accumulate)
}

/// The `portable` level: the baseline target's vectors; fused multiply-adds
/// where the baseline has them (aarch64), separate ones elsewhere.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_product_portable(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    w: Data,
    n0: usize,
    nc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    const KIND: u8 = if cfg!(target_arch = "aarch64") { 1 } else { 0 };
    tile_product::<KIND>(a, lda, m, k, w, n0, nc, c, ldc, accumulate)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::NR;

    /// Up to 6 rows × 16 columns: 12 ymm accumulators, one FMA chain per
    /// element in k order as every level does.
    ///
    /// # Safety
    /// As `super::kernel`, with `r ≤ 6` rows and `cols ≤ 16`; AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        r: usize,
        kc: usize,
        a: *const f32,
        lda: usize,
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        load_c: bool,
    ) {
        match r {
            6 => unsafe { rows::<6>(kc, a, lda, bp, c, ldc, cols, load_c) },
            5 => unsafe { rows::<5>(kc, a, lda, bp, c, ldc, cols, load_c) },
            4 => unsafe { rows::<4>(kc, a, lda, bp, c, ldc, cols, load_c) },
            3 => unsafe { rows::<3>(kc, a, lda, bp, c, ldc, cols, load_c) },
            2 => unsafe { rows::<2>(kc, a, lda, bp, c, ldc, cols, load_c) },
            _ => unsafe { rows::<1>(kc, a, lda, bp, c, ldc, cols, load_c) },
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        load_c: bool,
    ) {
        unsafe {
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            for kk in 0..kc {
                let b0 = _mm256_loadu_ps(bp.add(kk * NR));
                let b1 = _mm256_loadu_ps(bp.add(kk * NR + 8));
                for r in 0..R {
                    let av = _mm256_broadcast_ss(&*a.add(r * lda + kk));
                    acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                    acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
                }
            }
            for r in 0..R {
                let mut t = [0.0f32; 16];
                _mm256_storeu_ps(t.as_mut_ptr(), acc0[r]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), acc1[r]);
                super::store_row(c.add(r * ldc), &t, cols, load_c);
            }
        }
    }
}

/// x86-64's baseline (SSE2): 4 rows × 8 columns, 8 xmm accumulators,
/// multiply then add (no FMA), the plain-loop kernel's arithmetic (LLVM does
/// not vectorise that one here: it keeps the accumulators on the stack).
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    use super::NR;

    /// # Safety
    /// As `super::kernel`, with `r ≤ 4` rows and `cols ≤ 8`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        r: usize,
        kc: usize,
        a: *const f32,
        lda: usize,
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        load_c: bool,
    ) {
        match r {
            4 => unsafe { rows::<4>(kc, a, lda, bp, c, ldc, cols, load_c) },
            3 => unsafe { rows::<3>(kc, a, lda, bp, c, ldc, cols, load_c) },
            2 => unsafe { rows::<2>(kc, a, lda, bp, c, ldc, cols, load_c) },
            _ => unsafe { rows::<1>(kc, a, lda, bp, c, ldc, cols, load_c) },
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        load_c: bool,
    ) {
        unsafe {
            let mut acc0 = [_mm_setzero_ps(); R];
            let mut acc1 = [_mm_setzero_ps(); R];
            for kk in 0..kc {
                let b0 = _mm_loadu_ps(bp.add(kk * NR));
                let b1 = _mm_loadu_ps(bp.add(kk * NR + 4));
                for r in 0..R {
                    let av = _mm_set1_ps(*a.add(r * lda + kk));
                    acc0[r] = _mm_add_ps(_mm_mul_ps(av, b0), acc0[r]);
                    acc1[r] = _mm_add_ps(_mm_mul_ps(av, b1), acc1[r]);
                }
            }
            for r in 0..R {
                let mut t = [0.0f32; 8];
                _mm_storeu_ps(t.as_mut_ptr(), acc0[r]);
                _mm_storeu_ps(t.as_mut_ptr().add(4), acc1[r]);
                super::store_row(c.add(r * ldc), &t, cols, load_c);
            }
        }
    }
}
