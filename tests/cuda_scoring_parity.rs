//! The scoring kernels against their CPU twins on fresh random inputs: the
//! fused log-prob kernel (policy and reference rows in one pass, soft-capped
//! too) against `score::fused::row_stats` / `row_logp`, and the folded LM
//! head against the CPU's LM head and scorer. Outputs are poisoned before
//! each launch (see tests/cuda_kernel_parity.rs); without a usable CUDA
//! device every test prints why and returns, `PADV_REQUIRE_GPU=1` makes that
//! a failure.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use padv::backend::cpu::gemm::matmul_wt_reference;
use padv::backend::cuda::DevTensor;
use padv::backend::cuda::lm_head::HeadSide;
use padv::model::weights::{DType, Data, Tensor};
use padv::score::fused::{row_logp, row_stats};

#[test]
fn fused_logprob_matches_row_stats_and_row_logp() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(7);
    // The last case soft-caps both rows at 30 (Gemma): the CPU twin reads
    // capped logits.
    for (vocab, pad, scale, cap) in [
        (7usize, 1usize, 3.0f32, None),
        (513, 3, 20.0, None),
        (4099, 1, 0.01, None),
        (151_936, 0, 30.0, None),
        (32_000, 8, 10.0, None),
        (4099, 1, 40.0, Some(30.0f32)),
    ] {
        let ld = (vocab + pad).next_multiple_of(4);
        let rows = 6;
        let mut lp = vec![f32::NAN; rows * ld];
        let mut lr = vec![f32::NAN; rows * ld];
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
        for r in 0..rows {
            let p = rng.vec(vocab, scale);
            let q = rng.vec(vocab, scale);
            lp[r * ld..r * ld + vocab].copy_from_slice(&p);
            lr[r * ld..r * ld + vocab].copy_from_slice(&q);
        }
        // A late maximum (online rescale), a flat row (ties everywhere).
        lp[ld + vocab - 1] = 2.0 * scale;
        lp[2 * ld..2 * ld + vocab].fill(0.5);
        let dp = gpu.upload(&lp).unwrap();
        let dr = gpu.upload(&lr).unwrap();
        let dtg = gpu.upload(&targets).unwrap();
        let mut out = gpu.poisoned_f32(4 * rows).unwrap();
        gpu.fused_logprob(
            &dp.as_view(),
            &dr.as_view(),
            &dtg.as_view(),
            &mut out.as_view_mut(),
            vocab,
            ld,
            cap,
        )
        .unwrap();
        let got = download(&gpu, &out);
        let capped = |z: &[f32]| -> Vec<f32> {
            match cap {
                Some(c) => z.iter().map(|v| c * (v / c).tanh()).collect(),
                None => z.to_vec(),
            }
        };
        for r in 0..rows {
            let t = targets[r] as usize;
            let p = row_stats(&capped(&lp[r * ld..r * ld + vocab]), t);
            let q = row_logp(&capped(&lr[r * ld..r * ld + vocab]), t);
            let g = &got[4 * r..4 * r + 4];
            // Both sides reduce ~vocab f32 exps in different orders: the
            // CPU's own fused-vs-naive test allows 2e-5; log-probs here reach
            // lse ≈ 40, where one f32 ulp is 4e-6.
            let tag = format!("fused vocab {vocab} cap {cap:?} row {r}");
            assert_close(
                &format!("{tag} logp_policy"),
                &g[0..1],
                &[p.logp],
                3e-5,
                1e-6,
                DType::F32,
            );
            assert_close(
                &format!("{tag} logp_ref"),
                &g[1..2],
                &[q],
                3e-5,
                1e-6,
                DType::F32,
            );
            assert_close(
                &format!("{tag} entropy"),
                &g[2..3],
                &[p.entropy],
                3e-5,
                3e-5,
                DType::F32,
            );
            assert_close(
                &format!("{tag} top_mean"),
                &g[3..4],
                &[p.top_mean],
                3e-5,
                1e-6,
                DType::F32,
            );
        }
    }
}

/// The CPU's view of one side of the folded LM head: logits of the rounded
/// operands (f64 sums), soft-capped when asked.
fn cpu_logits(h: &[f32], w: &[f32], rows: usize, vocab: usize, cap: Option<f32>) -> Vec<f32> {
    let shape = [vocab, h.len() / rows];
    let t = Tensor {
        name: "lm_head",
        shape: &shape,
        data: Data::F32(w),
    };
    let mut z = matmul_wt_reference(h, rows, &t);
    if let Some(c) = cap {
        z.iter_mut().for_each(|v| *v = c * (*v / c).tanh());
    }
    z
}

fn side<'a>(
    h: &'a DevTensor,
    w: &'a DevTensor,
    width: usize,
    softcap: Option<f32>,
) -> HeadSide<'a> {
    HeadSide {
        hidden: h.all(),
        lm_head: w.all(),
        width,
        softcap,
    }
}

#[test]
fn lm_head_fold_matches_the_cpu_lm_head_and_fused_scorer() {
    let Some(gpu) = fold_gpu() else { return };
    let mut rng = Rng(8);
    // (rows, hidden, vocab, soft-cap, splits): a partial row tile, a hidden
    // size that ends mid-stage (200 = 6·32 + 8) and a vocabulary that ends
    // mid-sub-tile; the soft-cap over three row tiles and three splits;
    // the Qwen vocabulary at the 0.5B hidden size over few rows (32
    // splits); one split.
    let cases = [
        (150usize, 200usize, 5003usize, None, None::<usize>),
        (300, 64, 1000, Some(3.0f32), Some(3)),
        (7, 896, 151_936, None, None),
        (130, 128, 4096, None, Some(1)),
    ];
    for (n, d, vocab, cap, splits) in cases {
        for dt in [DType::BF16, DType::F16] {
            let mut hp = rng.vec(n * d, 1.0);
            let mut wp = rng.vec(vocab * d, 1.0);
            let (hr, wr) = (rng.vec(n * d, 1.0), rng.vec(vocab * d, 1.0));
            // Row 0 all ties (zero hidden state); row 1's largest logit in
            // the very last column (the online rescale at the end).
            hp[..d].fill(0.0);
            for k in 0..d {
                wp[(vocab - 1) * d + k] = 0.25 * hp[d + k];
            }
            let mut targets: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
            targets[1] = vocab as u32 - 1;
            targets[2] = 0;
            let (hp, wp, hr, wr) = (
                rounded(dt, &hp),
                rounded(dt, &wp),
                rounded(dt, &hr),
                rounded(dt, &wr),
            );
            let zp = cpu_logits(&hp, &wp, n, vocab, cap);
            let zr = cpu_logits(&hr, &wr, n, vocab, cap);
            let up = |v: &[f32]| DevTensor::from_f32(&gpu, v, dt).unwrap();
            let (dhp, dwp, dhr, dwr) = (up(&hp), up(&wp), up(&hr), up(&wr));
            let (sp, sr) = (side(&dhp, &dwp, d, cap), side(&dhr, &dwr, d, cap));
            let dtg = gpu.upload(&targets).unwrap();
            let splits = splits.unwrap_or_else(|| gpu.fold_splits(n, vocab));
            for with_policy in [true, false] {
                let mut out = gpu.poisoned_f32(4 * n).unwrap();
                let p = with_policy.then_some(&sp);
                gpu.lm_head_fold(
                    p,
                    &sr,
                    &dtg.as_view(),
                    &mut out.as_view_mut(),
                    vocab,
                    Some(splits),
                )
                .unwrap();
                let got = download(&gpu, &out);
                let mut want = Vec::with_capacity(4 * n);
                for r in 0..n {
                    let t = targets[r] as usize;
                    let q = row_logp(&zr[r * vocab..(r + 1) * vocab], t);
                    if with_policy {
                        let p = row_stats(&zp[r * vocab..(r + 1) * vocab], t);
                        want.extend([p.logp, q, p.entropy, p.top_mean]);
                    } else {
                        want.extend([q, q]);
                    }
                }
                let got: Vec<f32> = if with_policy {
                    got
                } else {
                    got.chunks(4).flat_map(|g| [g[0], g[1]]).collect()
                };
                // The GPU sums d bf16/f16 products in f32 inside the tensor
                // cores (d/16 accumulations of 16), the CPU in f64: logits
                // differ by up to ~d/16 f32 roundings of |z| ≲ d/6 (the
                // crafted row; others ≲ √d), and every score inherits that;
                // a wrong column, row, split or top-k entry is off by O(1).
                let tag = format!(
                    "fold {dt:?} n {n} d {d} vocab {vocab} cap {cap:?} splits {splits} \
                     policy {with_policy}"
                );
                let abs = 3e-4 * (d as f32 / 256.0).max(1.0);
                assert_close(&tag, &got, &want, abs, 2e-5, DType::F32);
            }
        }
    }
}
