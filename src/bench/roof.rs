//! The instruction roofs `padv bench` compares the forward against: the
//! peak rate of the f32 FMA (`vfmadd231ps` zmm) and of the bf16 dot product
//! (`vdpbf16ps` zmm), each a loop of 12 independent accumulators (enough to
//! cover the latency at one instruction per cycle), run on every thread at
//! once. FLOPs per instruction: 32 (16 lanes × multiply-add) and 64 (16
//! lanes × two multiply-adds).

use rayon::prelude::*;

/// Rounds of 12 instructions per timed run.
const ITERS: usize = 20_000_000;

/// Peak GFLOP/s of the f32 FMA on all threads; `None` below AVX-512.
pub fn f32_fma_roof_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::level() == crate::simd::Level::Avx512 {
        // SAFETY: the level implies AVX-512 F.
        return Some(all_threads(32, || unsafe { x86::fma_loop(ITERS) }));
    }
    None
}

/// Peak GFLOP/s of `vdpbf16ps` on all threads; `None` without AVX512-BF16.
pub fn bf16_dot_roof_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512_bf16() {
        // SAFETY: the CPU has AVX512-BF16.
        return Some(all_threads(64, || unsafe { x86::dpbf16_loop(ITERS) }));
    }
    None
}

/// Best of three runs of `f` on every rayon thread at once.
fn all_threads(flops_per_instr: usize, f: impl Fn() -> f32 + Sync) -> f64 {
    let threads = rayon::current_num_threads().max(1);
    let best = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            (0..threads).into_par_iter().for_each(|_| {
                std::hint::black_box(f());
            });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (threads * ITERS * 12 * flops_per_instr) as f64 / best / 1e9
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The sum of the accumulators (kept live, so the loop is not removed).
    #[target_feature(enable = "avx512f")]
    fn sum(acc: &[__m512; 12]) -> f32 {
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(s)
    }

    /// # Safety
    /// AVX-512 F.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn fma_loop(iters: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let (x, y) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
        }
        sum(&acc)
    }

    /// # Safety
    /// AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dpbf16_loop(iters: usize) -> f32 {
        // SAFETY (both): 512 bits of plain data reinterpreted.
        let bh = |v: __m512i| unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
        let mut acc = [_mm512_setzero_ps(); 12];
        // Pairs (1.0, 1.0) and (2⁻²³, 2⁻²³) as bf16.
        let (x, y) = (
            bh(_mm512_set1_epi32(0x3f80_3f80)),
            bh(_mm512_set1_epi32(0x3400_3400)),
        );
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, y);
            }
        }
        sum(&acc)
    }
}
