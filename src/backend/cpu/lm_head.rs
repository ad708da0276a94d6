//! The LM head folded into the scoring (Cut-Cross-Entropy style, on CPU):
//! logits are produced one `[rows × NC]` tile at a time by
//! [`super::gemm::tile_product`] into a per-thread buffer that stays in L2,
//! and each tile is immediately folded into the rows' streaming statistics
//! ([`RowAccum`]: max, Σexp, Σexp·z, top-k, target logit). No `[T × vocab]`
//! logits exist anywhere; per-thread partial rows are merged at the end.

use rayon::prelude::*;
use rten_simd::SimdUnaryOp;
use rten_vecmath::Tanh;

use super::gemm::NC;
use super::gemm_bf16::{Gemm, Lhs};
use crate::backend::profile::{self, Part};
use crate::model::weights::Tensor;
use crate::score::fused::{RowAccum, RowStats};

/// Rows scored per pass over the LM head (the logits tile is `ROWS × NC`).
const ROWS: usize = 512;
/// Fixed ranges of the vocabulary folded independently, then merged in
/// order (enough to feed many threads; fixed so results are reproducible).
const GROUPS: usize = 64;

/// Stats of `softmax(x · Wᵀ)` for every row of `x` (`[rows, hidden]`),
/// at `targets[r]`. `full`: also entropy and top-k mean (the policy).
/// `softcap`: logits are `c · tanh(z / c)` (Gemma), applied to each tile
/// before it is folded. The logits' GEMM runs in `gemm`'s arithmetic (the
/// rows rounded once per pass in bf16).
pub fn lm_head_stats(
    gemm: Gemm,
    x: &[f32],
    rows: usize,
    w: &Tensor,
    targets: &[u32],
    full: bool,
    softcap: Option<f32>,
) -> Vec<RowStats> {
    let _span = profile::span(Part::LmHead);
    let (vocab, k) = (w.rows(), w.cols());
    assert_eq!(targets.len(), rows, "lm_head_stats: one target per row");
    let mut out = Vec::with_capacity(rows);
    for r0 in (0..rows).step_by(ROWS) {
        let r1 = (r0 + ROWS).min(rows);
        let m = r1 - r0;
        let xs = &x[r0 * k..r1 * k];
        let tg = &targets[r0..r1];
        let lhs = Lhs::new(gemm, xs, m, k);
        // The vocabulary is cut into GROUPS fixed ranges of tiles, each
        // folded in order on one thread, and the groups are merged in order:
        // the result does not depend on the thread count or on scheduling
        // (a work-stealing fold/reduce merged partial rows in a varying
        // order, which moved log-probs by a few ulps from run to run).
        let tiles = vocab.div_ceil(NC);
        let per_group = tiles.div_ceil(GROUPS);
        let partials: Vec<Vec<RowAccum>> = (0..tiles.div_ceil(per_group))
            .into_par_iter()
            .map(|g| {
                let mut acc = vec![RowAccum::new(full); m];
                let mut tile = vec![0.0f32; m * NC];
                for j in g * per_group..((g + 1) * per_group).min(tiles) {
                    let j0 = j * NC;
                    let nc = NC.min(vocab - j0);
                    lhs.tile_product(0, m, w.data, j0, nc, &mut tile, NC, false);
                    for (i, a) in acc.iter_mut().enumerate() {
                        let row = &mut tile[i * NC..i * NC + nc];
                        if let Some(c) = softcap {
                            soft_cap(row, c);
                        }
                        a.update(row, j0, tg[i] as usize);
                    }
                }
                acc
            })
            .collect();
        let mut parts = partials.into_iter();
        let mut acc = parts.next().unwrap_or_else(|| vec![RowAccum::new(full); m]);
        for p in parts {
            for (x, y) in acc.iter_mut().zip(&p) {
                x.merge(y);
            }
        }
        out.extend(acc.iter().map(RowAccum::finish));
    }
    out
}

/// `z ← c · tanh(z / c)`, as transformers applies Gemma's final soft-cap
/// (divide, tanh, multiply, in f32), the tanh vectorised (rten-vecmath,
/// ≤ 3 ulp). With libm's scalar tanh (~7 ns a logit here) the cap cost
/// more than the LM head's GEMM on a 640-wide model.
pub fn soft_cap(row: &mut [f32], c: f32) {
    row.iter_mut().for_each(|z| *z /= c);
    Tanh {}.map_mut(row);
    row.iter_mut().for_each(|z| *z *= c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm::matmul_wt_reference;
    use crate::model::weights::Data;
    use crate::score::fused::naive_row_stats;

    #[test]
    fn soft_cap_matches_c_tanh_z_over_c_in_f64() {
        // Logits from −90 to 90 (deep into saturation at cap 30), odd length.
        let zs: Vec<f32> = (-901..=901).map(|i| i as f32 / 10.0).collect();
        let mut got = zs.clone();
        soft_cap(&mut got, 30.0);
        for (&z, &g) in zs.iter().zip(&got) {
            let want = (z as f64 / 30.0).tanh() * 30.0;
            // ≤ 3 ulp of tanh, scaled by the cap: ~1e-5 absolute at most.
            assert!((g as f64 - want).abs() <= 1e-5, "{z}: {g} vs {want}");
        }
        assert_eq!(got[901], 0.0);
        assert!(got[0] > -30.0 && got[0] < -29.0);
    }

    #[test]
    fn folded_lm_head_equals_materialised_logits_then_log_softmax() {
        let (rows, vocab, k) = (300, 1000, 48);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 31) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let w: Vec<half::bf16> = (0..vocab * k)
            .map(|i| half::bf16::from_f32(((i * 17) % 89) as f32 / 44.0 - 1.0))
            .collect();
        let shape = [vocab, k];
        let t = Tensor {
            name: "lm_head",
            shape: &shape,
            data: Data::BF16(&w),
        };
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % vocab as u32).collect();
        let got = lm_head_stats(Gemm::F32, &x, rows, &t, &targets, true, None);
        let logits = matmul_wt_reference(&x, rows, &t);
        // Soft-capped (Gemma): the same folding over c·tanh(z/c), computed
        // here in f64 on the materialised logits.
        let cap = 3.0f32;
        let capped = lm_head_stats(Gemm::F32, &x, rows, &t, &targets, true, Some(cap));
        for r in 0..rows {
            let row: Vec<f32> = logits[r * vocab..(r + 1) * vocab]
                .iter()
                .map(|&z| ((z as f64 / cap as f64).tanh() * cap as f64) as f32)
                .collect();
            let want = naive_row_stats(&row, targets[r] as usize);
            let g = capped[r];
            assert!(
                (g.logp - want.logp).abs() < 1e-4,
                "capped {r}: {g:?} vs {want:?}"
            );
            assert!((g.entropy - want.entropy).abs() < 1e-4, "capped {r}");
            assert!((g.top_mean - want.top_mean).abs() < 1e-4, "capped {r}");
        }
        let moved = capped
            .iter()
            .zip(&got)
            .map(|(a, b)| (a.logp - b.logp).abs());
        assert!(
            moved.fold(0.0, f32::max) > 0.1,
            "the cap must change the scores"
        );
        for r in 0..rows {
            let want = naive_row_stats(&logits[r * vocab..(r + 1) * vocab], targets[r] as usize);
            let g = got[r];
            assert!((g.logp - want.logp).abs() < 1e-4, "{r}: {g:?} vs {want:?}");
            assert!(
                (g.entropy - want.entropy).abs() < 1e-4,
                "{r}: {g:?} vs {want:?}"
            );
            assert!(
                (g.top_mean - want.top_mean).abs() < 1e-4,
                "{r}: {g:?} vs {want:?}"
            );
        }
        let logp_only = lm_head_stats(Gemm::F32, &x, rows, &t, &targets, false, None);
        assert!(
            logp_only
                .iter()
                .zip(&got)
                .all(|(a, b)| (a.logp - b.logp).abs() < 1e-6 && a.entropy.is_nan())
        );
    }
}
