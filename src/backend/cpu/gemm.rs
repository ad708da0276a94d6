//! `C = A · Wᵀ` with `A` f32 activations and `W` a stored weight in bf16,
//! f16 or f32 (`[N, K]`, row-major as safetensors keeps it).
//!
//! Design (BLIS-style, sized for this machine's 32 KB L1 / 1 MB L2):
//! a tile of `NC` weight rows is widened to f32 *while packing* it into
//! `NR`-wide micro-panels (`[kc][NR]`), so the bf16 → f32 conversion costs
//! one pass over the tile and no f32 copy of the matrix ever exists. The
//! AVX-512 micro-kernel keeps an `MR × NR` (14 × 32) block of C in 28 zmm
//! registers and broadcasts A straight from its row-major storage (no A
//! packing: 14 row streams of `kc` floats stay in L1/L2). Below the AVX-512
//! level (`crate::simd`) `gemm_portable` does the same arithmetic in plain
//! loops (same bits at the `avx2` level).
//!
//! [`tile_product`] is the single-threaded unit; [`matmul_wt`] spreads
//! (weight tile × token range) tasks over rayon; the LM head uses
//! `tile_product` directly and folds each tile into row statistics
//! (`super::lm_head`).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::backend::profile::{self, Part};
use crate::model::weights::{Data, Tensor};
use crate::simd::Level;

/// Rows of C per micro-kernel call.
const MR: usize = 14;
/// Columns of C per micro-kernel call (two zmm vectors).
pub(super) const NR: usize = 32;
/// Depth of one packed block (B micro-panel `KC × NR × 4` = 24 KB, in L1).
pub(super) const KC: usize = 192;
/// Weight rows per task tile.
pub const NC: usize = 128;

thread_local! {
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Take this thread's scratch buffer (re-entrancy safe: nested users get a
/// fresh one) and give it back afterwards.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = take_scratch(len);
    let r = f(&mut buf[..len]);
    give_back_scratch(buf);
    r
}

/// This thread's scratch buffer, at least `len` long (a closure-free
/// [`with_scratch`] for callers compiled with other target features: a
/// closure would be compiled without them).
#[inline(always)]
pub(super) fn take_scratch(len: usize) -> Vec<f32> {
    let mut buf = PACK.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    buf
}

#[inline(always)]
pub(super) fn give_back_scratch(buf: Vec<f32>) {
    PACK.with(|b| *b.borrow_mut() = buf);
}

/// Single-threaded `C[0..m, 0..nc] (+)= A[0..m, 0..k] · W[n0..n0+nc, 0..k]ᵀ`.
///
/// `a` has row stride `lda`, `c` row stride `ldc`; `w` is `[*, k]`.
#[allow(clippy::too_many_arguments)]
pub fn tile_product(
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
    if m == 0 || nc == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "tile_product: A too small");
    assert!(c.len() >= (m - 1) * ldc + nc, "tile_product: C too small");
    assert!(w.len() >= (n0 + nc) * k, "tile_product: W too small");
    tile_product_at(
        crate::simd::level(),
        a,
        lda,
        m,
        k,
        w,
        n0,
        nc,
        c,
        ldc,
        accumulate,
    );
}

/// [`tile_product`] with the kernels of `level` (at most the CPU's).
#[allow(clippy::too_many_arguments)]
fn tile_product_at(
    level: Level,
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
    use super::gemm_portable as portable;
    debug_assert!(
        level <= crate::simd::detected(),
        "{level:?} kernels on this CPU"
    );
    match level {
        // SAFETY (both): the level implies the features; bounds were asserted above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe {
            avx512::tile_product(a, lda, m, k, w, n0, nc, c, ldc, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe {
            portable::tile_product_avx2(a, lda, m, k, w, n0, nc, c, ldc, accumulate)
        },
        _ => portable::tile_product_portable(a, lda, m, k, w, n0, nc, c, ldc, accumulate),
    }
}

/// The 14 × 32 micro-tile loop of the AVX-512 kernels, as one asm block
/// (LLVM unrolls the intrinsic version and spills accumulators, so the hot
/// loop is pinned down here): `$bcast` broadcasts one 32-bit A element per
/// row (`vbroadcastss` a float, `vpbroadcastd` a bf16 pair), `$op`
/// accumulates it against the packed B row (`vfmadd231ps`, `vdpbf16ps`).
/// zmm0–27 hold C (row r in 2r, 2r+1), zmm28/29 the B row, zmm30/31
/// alternate as A broadcasts; A rows are addressed as `a0|a5|a10 +
/// {0,1,2,3,4}·lda`. Evaluates to the 28 accumulators. Unsafe: `$a` must
/// hold 14 rows of `$k` 32-bit elements at stride `$lda`, `$b` `$k` rows of
/// 32, `$k ≥ 1`.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_14x32 {
    ($bcast:literal, $op:literal, $a:expr, $lda:expr, $b:expr, $k:expr) => {{
        let mut acc = [std::arch::x86_64::_mm512_setzero_ps(); 28];
        let (a, ldab) = ($a, $lda * 4);
        std::arch::asm!(
            "vxorps zmm0, zmm0, zmm0", "vxorps zmm1, zmm1, zmm1", "vxorps zmm2, zmm2, zmm2",
            "vxorps zmm3, zmm3, zmm3", "vxorps zmm4, zmm4, zmm4", "vxorps zmm5, zmm5, zmm5",
            "vxorps zmm6, zmm6, zmm6", "vxorps zmm7, zmm7, zmm7", "vxorps zmm8, zmm8, zmm8",
            "vxorps zmm9, zmm9, zmm9", "vxorps zmm10, zmm10, zmm10", "vxorps zmm11, zmm11, zmm11",
            "vxorps zmm12, zmm12, zmm12", "vxorps zmm13, zmm13, zmm13", "vxorps zmm14, zmm14, zmm14",
            "vxorps zmm15, zmm15, zmm15", "vxorps zmm16, zmm16, zmm16", "vxorps zmm17, zmm17, zmm17",
            "vxorps zmm18, zmm18, zmm18", "vxorps zmm19, zmm19, zmm19", "vxorps zmm20, zmm20, zmm20",
            "vxorps zmm21, zmm21, zmm21", "vxorps zmm22, zmm22, zmm22", "vxorps zmm23, zmm23, zmm23",
            "vxorps zmm24, zmm24, zmm24", "vxorps zmm25, zmm25, zmm25", "vxorps zmm26, zmm26, zmm26",
            "vxorps zmm27, zmm27, zmm27",
            "2:",
            "vmovups zmm28, [{b}]",
            "vmovups zmm29, [{b} + 64]",
            concat!($bcast, " zmm30, dword ptr [{a0}]"),
            concat!($op, " zmm0, zmm30, zmm28"), concat!($op, " zmm1, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a0} + {lda}]"),
            concat!($op, " zmm2, zmm31, zmm28"), concat!($op, " zmm3, zmm31, zmm29"),
            concat!($bcast, " zmm30, dword ptr [{a0} + {lda}*2]"),
            concat!($op, " zmm4, zmm30, zmm28"), concat!($op, " zmm5, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a0} + {lda3}]"),
            concat!($op, " zmm6, zmm31, zmm28"), concat!($op, " zmm7, zmm31, zmm29"),
            concat!($bcast, " zmm30, dword ptr [{a0} + {lda}*4]"),
            concat!($op, " zmm8, zmm30, zmm28"), concat!($op, " zmm9, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a5}]"),
            concat!($op, " zmm10, zmm31, zmm28"), concat!($op, " zmm11, zmm31, zmm29"),
            concat!($bcast, " zmm30, dword ptr [{a5} + {lda}]"),
            concat!($op, " zmm12, zmm30, zmm28"), concat!($op, " zmm13, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a5} + {lda}*2]"),
            concat!($op, " zmm14, zmm31, zmm28"), concat!($op, " zmm15, zmm31, zmm29"),
            concat!($bcast, " zmm30, dword ptr [{a5} + {lda3}]"),
            concat!($op, " zmm16, zmm30, zmm28"), concat!($op, " zmm17, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a5} + {lda}*4]"),
            concat!($op, " zmm18, zmm31, zmm28"), concat!($op, " zmm19, zmm31, zmm29"),
            concat!($bcast, " zmm30, dword ptr [{a10}]"),
            concat!($op, " zmm20, zmm30, zmm28"), concat!($op, " zmm21, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a10} + {lda}]"),
            concat!($op, " zmm22, zmm31, zmm28"), concat!($op, " zmm23, zmm31, zmm29"),
            concat!($bcast, " zmm30, dword ptr [{a10} + {lda}*2]"),
            concat!($op, " zmm24, zmm30, zmm28"), concat!($op, " zmm25, zmm30, zmm29"),
            concat!($bcast, " zmm31, dword ptr [{a10} + {lda3}]"),
            concat!($op, " zmm26, zmm31, zmm28"), concat!($op, " zmm27, zmm31, zmm29"),
            "add {a0}, 4",
            "add {a5}, 4",
            "add {a10}, 4",
            "add {b}, 128",
            "dec {k}",
            "jnz 2b",
            a0 = inout(reg) a => _,
            a5 = inout(reg) a.byte_add(5 * ldab) => _,
            a10 = inout(reg) a.byte_add(10 * ldab) => _,
            lda = in(reg) ldab,
            lda3 = in(reg) 3 * ldab,
            b = inout(reg) $b => _,
            k = inout(reg) $k => _,
            out("zmm0") acc[0], out("zmm1") acc[1], out("zmm2") acc[2], out("zmm3") acc[3],
            out("zmm4") acc[4], out("zmm5") acc[5], out("zmm6") acc[6], out("zmm7") acc[7],
            out("zmm8") acc[8], out("zmm9") acc[9], out("zmm10") acc[10], out("zmm11") acc[11],
            out("zmm12") acc[12], out("zmm13") acc[13], out("zmm14") acc[14], out("zmm15") acc[15],
            out("zmm16") acc[16], out("zmm17") acc[17], out("zmm18") acc[18], out("zmm19") acc[19],
            out("zmm20") acc[20], out("zmm21") acc[21], out("zmm22") acc[22], out("zmm23") acc[23],
            out("zmm24") acc[24], out("zmm25") acc[25], out("zmm26") acc[26], out("zmm27") acc[27],
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            options(nostack, readonly),
        );
        acc
    }};
}
#[cfg(target_arch = "x86_64")]
pub(super) use tile_14x32;

#[cfg(target_arch = "x86_64")]
pub(super) use avx512::{store_14x32, store_masked, transpose16};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{KC, MR, NR, with_scratch};
    use crate::model::weights::Data;

    /// `C[0..R, 0..32] (+)= A[0..R, 0..kc] · Bp` for one packed micro-panel
    /// `Bp: [kc][32]`; `mask0/mask1` select valid columns of the two halves.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel<const R: usize>(
        kc: usize,
        a: *const f32, // [R, kc] row stride lda
        lda: usize,
        bp: *const f32, // [kc, 32] packed
        c: *mut f32,    // [R, ≤32] row stride ldc
        ldc: usize,
        mask0: u16,
        mask1: u16,
        load_c: bool,
    ) {
        unsafe {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            for kk in 0..kc {
                let b0 = _mm512_loadu_ps(bp.add(kk * NR));
                let b1 = _mm512_loadu_ps(bp.add(kk * NR + 16));
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.add(r * lda + kk));
                    acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
                }
            }
            store_masked(&acc0, &acc1, c, ldc, mask0, mask1, load_c);
        }
    }

    /// The full 14 × 32 tile in hand-scheduled assembly ([`tile_14x32`]).
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel_full(
        kc: usize,
        a: *const f32,
        lda: usize,
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        // SAFETY: forwarded from the caller (14 rows of A of kc values at
        // stride lda, kc rows of 32 packed values, 14 rows of 32 of C).
        unsafe {
            let acc = super::tile_14x32!("vbroadcastss", "vfmadd231ps", a, lda, bp, kc);
            store_14x32(&acc, c, ldc, load_c);
        }
    }

    /// `C[r, 0..32] = [acc0[r] | acc1[r]] (+ C)` for `r < R`, the columns
    /// of the two 16-wide halves chosen by `mask0` / `mask1` (an edge tile).
    ///
    /// # Safety
    /// `c` holds `R` rows at stride `ldc` with the masked columns in bounds.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cpu) unsafe fn store_masked<const R: usize>(
        acc0: &[__m512; R],
        acc1: &[__m512; R],
        c: *mut f32,
        ldc: usize,
        mask0: u16,
        mask1: u16,
        load_c: bool,
    ) {
        for r in 0..R {
            // SAFETY: row r < R of C, the masked columns.
            unsafe {
                let cp = c.add(r * ldc);
                let (mut v0, mut v1) = (acc0[r], acc1[r]);
                if load_c {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, cp));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, cp.add(16)));
                }
                _mm512_mask_storeu_ps(cp, mask0, v0);
                _mm512_mask_storeu_ps(cp.add(16), mask1, v1);
            }
        }
    }

    /// `C[0..14, 0..32] = acc (+ C)`, accumulator `2r + h` holding row r,
    /// columns 16h..16h+16.
    ///
    /// # Safety
    /// `c` holds 14 rows of 32 floats at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub(in crate::backend::cpu) unsafe fn store_14x32(
        acc: &[__m512; 28],
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        for r in 0..MR {
            // SAFETY: row r < 14 of C, 32 values.
            unsafe {
                let cp = c.add(r * ldc);
                let (mut v0, mut v1) = (acc[2 * r], acc[2 * r + 1]);
                if load_c {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(cp));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(cp.add(16)));
                }
                _mm512_storeu_ps(cp, v0);
                _mm512_storeu_ps(cp.add(16), v1);
            }
        }
    }

    type Kernel = unsafe fn(usize, *const f32, usize, *const f32, *mut f32, usize, u16, u16, bool);

    const KERNELS: [Kernel; MR] = [
        kernel::<1>,
        kernel::<2>,
        kernel::<3>,
        kernel::<4>,
        kernel::<5>,
        kernel::<6>,
        kernel::<7>,
        kernel::<8>,
        kernel::<9>,
        kernel::<10>,
        kernel::<11>,
        kernel::<12>,
        kernel::<13>,
        kernel::<14>,
    ];

    /// Widen and pack weight rows `[n0, n0 + nc)`, depth `[k0, k0 + kc)`, into
    /// micro-panels `[nc/NR][kc][NR]` (zero-padded columns). Full 16 × 16
    /// blocks are widened in registers and transposed with shuffles; the
    /// ragged edges go through the scalar path.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn pack(w: Data, k: usize, n0: usize, nc: usize, k0: usize, kc: usize, bp: &mut [f32]) {
        let mut row = [0.0f32; KC];
        let panels = nc.div_ceil(NR);
        // A merged view forms its weights in runs (`Merged::widen_into`):
        // it takes the row path, one call per row of the block.
        let kc16 = match w {
            Data::Merged(_) => 0,
            _ => kc / 16 * 16,
        };
        for q in 0..panels {
            let panel = &mut bp[q * kc * NR..(q + 1) * kc * NR];
            for half in 0..2 {
                let c0 = half * 16;
                let rows_here = nc.saturating_sub(q * NR + c0).min(16);
                if rows_here == 16 && kc16 > 0 {
                    for kk0 in (0..kc16).step_by(16) {
                        let mut r = [_mm512_setzero_ps(); 16];
                        for (i, v) in r.iter_mut().enumerate() {
                            *v = load16(w, (n0 + q * NR + c0 + i) * k + k0 + kk0);
                        }
                        transpose16(&mut r);
                        for (c, v) in r.iter().enumerate() {
                            // SAFETY: (kk0 + c)·NR + c0 + 16 ≤ kc·NR, inside the panel.
                            unsafe {
                                _mm512_storeu_ps(panel.as_mut_ptr().add((kk0 + c) * NR + c0), *v)
                            };
                        }
                    }
                }
                let done = if rows_here == 16 { kc16 } else { 0 };
                if done == kc {
                    continue;
                }
                for col in c0..c0 + 16 {
                    let j = q * NR + col;
                    if j < nc {
                        w.widen_into((n0 + j) * k + k0 + done, &mut row[..kc - done]);
                        for (kk, &v) in row[..kc - done].iter().enumerate() {
                            panel[(done + kk) * NR + col] = v;
                        }
                    } else {
                        for kk in done..kc {
                            panel[kk * NR + col] = 0.0;
                        }
                    }
                }
            }
        }
    }

    /// 16 consecutive weights from element `at`, widened to f32.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn load16(w: Data, at: usize) -> __m512 {
        match w {
            Data::F32(s) => {
                let v = &s[at..at + 16];
                // SAFETY: the slice has 16 elements.
                unsafe { _mm512_loadu_ps(v.as_ptr()) }
            }
            Data::BF16(s) => {
                let v = &s[at..at + 16];
                // SAFETY: 16 bf16 = 32 bytes read; bf16 → f32 is a 16-bit shift.
                unsafe {
                    let h = _mm256_loadu_si256(v.as_ptr() as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                }
            }
            Data::F16(s) => {
                let v = &s[at..at + 16];
                // SAFETY: 16 f16 = 32 bytes read.
                unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr() as *const __m256i)) }
            }
            Data::Merged(m) => {
                // Not reached from `pack` (see there); correct all the same.
                let mut v = [0f32; 16];
                m.widen_into(at, &mut v);
                // SAFETY: the array has 16 elements.
                unsafe { _mm512_loadu_ps(v.as_ptr()) }
            }
        }
    }

    /// In-register 16 × 16 transpose: `r[i][c]` becomes `r[c][i]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::backend::cpu) fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // Per group of four rows g: columns 4l, 4l+1, 4l+2, 4l+3 in lane l.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            let pd = _mm512_castps_pd;
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        // u[4g + j] holds columns j, 4+j, 8+j, 12+j (lanes) of rows 4g..4g+4.
        for j in 0..4 {
            let lo02 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
            let lo13 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
            let hi02 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
            let hi13 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
            r[j] = _mm512_shuffle_f32x4::<0x88>(lo02, hi02);
            r[8 + j] = _mm512_shuffle_f32x4::<0xdd>(lo02, hi02);
            r[4 + j] = _mm512_shuffle_f32x4::<0x88>(lo13, hi13);
            r[12 + j] = _mm512_shuffle_f32x4::<0xdd>(lo13, hi13);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_product(
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
        let panels = nc.div_ceil(NR);
        let nkb = k.div_ceil(KC);
        let kc_len = k.div_ceil(nkb);
        with_scratch(panels * kc_len * NR, |bp| {
            for kb in 0..nkb {
                let k0 = kb * kc_len;
                let kc = kc_len.min(k - k0);
                pack(w, k, n0, nc, k0, kc, bp);
                let load_c = accumulate || kb > 0;
                for q in 0..panels {
                    let cols = (nc - q * NR).min(NR);
                    let mask0 = if cols >= 16 {
                        0xffff
                    } else {
                        (1u16 << cols) - 1
                    };
                    let mask1 = if cols <= 16 {
                        0
                    } else if cols == 32 {
                        0xffff
                    } else {
                        (1u16 << (cols - 16)) - 1
                    };
                    let panel = bp[q * kc * NR..].as_ptr();
                    let mut p0 = 0;
                    while p0 < m {
                        let r = (m - p0).min(MR);
                        // SAFETY: rows p0..p0+r of A and C and the packed panel
                        // are in bounds (asserted by the caller).
                        unsafe {
                            if r == MR && cols == NR && kc > 0 {
                                kernel_full(
                                    kc,
                                    a.as_ptr().add(p0 * lda + k0),
                                    lda,
                                    panel,
                                    c.as_mut_ptr().add(p0 * ldc + q * NR),
                                    ldc,
                                    load_c,
                                );
                                p0 += r;
                                continue;
                            }
                            KERNELS[r - 1](
                                kc,
                                a.as_ptr().add(p0 * lda + k0),
                                lda,
                                panel,
                                c.as_mut_ptr().add(p0 * ldc + q * NR),
                                ldc,
                                mask0,
                                mask1,
                                load_c,
                            );
                        }
                        p0 += r;
                    }
                }
            }
        });
    }
}

/// Raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

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
    for_each_tile(rows, n, out, ldo, MR, |t0, t1, c0, c1, c| {
        tile_product(
            &x[t0 * k..],
            k,
            t1 - t0,
            k,
            w.data,
            c0,
            c1 - c0,
            c,
            ldo,
            accumulate,
        )
    });
}

/// Spread the tiles of an `[rows, n]` output over rayon: `f(t0, t1, c0, c1,
/// c)` computes rows `[t0, t1)`, columns `[c0, c1)` (`c` starts at
/// `out[t0, c0]`, row stride `ldo`). Tiles are `NC` columns wide, rows are
/// split in multiples of `mr` only when the column tiles alone cannot feed
/// every thread; tasks write disjoint tiles.
pub(super) fn for_each_tile(
    rows: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    mr: usize,
    f: impl Fn(usize, usize, usize, usize, &mut [f32]) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let n_tiles = n.div_ceil(NC);
    let m_splits = if n_tiles >= 4 * threads {
        1
    } else {
        (4 * threads)
            .div_ceil(n_tiles)
            .min(rows.div_ceil(mr))
            .max(1)
    };
    let m_step = rows.div_ceil(m_splits).div_ceil(mr) * mr;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_len = out.len();
    let run = |task: usize| {
        let (nj, mi) = (task / m_splits, task % m_splits);
        let (t0, t1) = (mi * m_step, ((mi + 1) * m_step).min(rows));
        if t0 >= t1 {
            return;
        }
        let (c0, c1) = (nj * NC, ((nj + 1) * NC).min(n));
        // SAFETY: tasks write disjoint (rows × columns) tiles of `out`,
        // which holds rows·ldo values (asserted by the callers).
        let c = unsafe {
            std::slice::from_raw_parts_mut(out_ptr.get().add(t0 * ldo), out_len - t0 * ldo)
        };
        f(t0, t1, c0, c1, &mut c[c0..]);
    };
    let tasks = n_tiles * m_splits;
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
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
        for (rows, n, k) in [(37, 600, 72), (1, 33, 5), (15, 129, 400), (200, 70, 193)] {
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
                let ld = n + 3;
                let mut got = vec![1.0; rows * ld];
                matmul_wt(&x, rows, &t, &mut got, ld, true);
                for r in 0..rows {
                    for c in 0..ld {
                        let g = got[r * ld + c] - 1.0;
                        let w = if c < n { want[r * n + c] } else { 0.0 };
                        assert!(
                            (g - w).abs() < 1e-4 * (k as f32).sqrt(),
                            "{rows}x{n}x{k} {r},{c}: {g} vs {w}"
                        );
                    }
                }
                for level in levels() {
                    let mut fb = vec![0.0; rows * n];
                    tile_product_at(level, &x, k, rows, k, data, 0, n, &mut fb, n, false);
                    for (a, b) in fb.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4 * (k as f32).sqrt(), "{level:?}");
                    }
                }
            }
        }
    }

    /// The kernel levels this CPU can run.
    fn levels() -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= crate::simd::detected())
            .collect()
    }

    /// Every level gives each row the same bits however many rows share the
    /// call (what makes a cached prefix change nothing), and the fused levels
    /// (avx2, avx512) give the same bits as each other.
    #[test]
    fn a_row_gets_the_same_bits_in_any_batch_and_at_every_fused_level() {
        let (rows, n, k) = (37, 70, 450);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let wb: Vec<half::bf16> = (0..n * k)
            .map(|i| half::bf16::from_f32(((i * 104729) % 89) as f32 / 89.0 - 0.5))
            .collect();
        let data = Data::BF16(&wb);
        let mut fused: Option<Vec<f32>> = None;
        for level in levels() {
            let mut all = vec![0.0; rows * n];
            tile_product_at(level, &x, k, rows, k, data, 0, n, &mut all, n, false);
            for (start, len) in [(0, 1), (5, 3), (13, 14), (30, 7), (36, 1)] {
                let mut part = vec![0.0; len * n];
                tile_product_at(
                    level,
                    &x[start * k..],
                    k,
                    len,
                    k,
                    data,
                    0,
                    n,
                    &mut part,
                    n,
                    false,
                );
                let same = part
                    .iter()
                    .zip(&all[start * n..])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{level:?}: rows {start}..+{len} alone differ from the whole batch"
                );
            }
            let fma = level != Level::Portable || cfg!(target_arch = "aarch64");
            if fma {
                match &fused {
                    Some(f) => assert!(
                        f.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{level:?} differs from the other fused level"
                    ),
                    None => fused = Some(all),
                }
            }
        }
    }
}
