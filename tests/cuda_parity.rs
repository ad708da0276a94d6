//! GPU-vs-CPU parity: every kernel against its CPU twin on fresh random
//! inputs (each dtype), and the whole CUDA pair scorer against the CPU one on
//! every fixture pair in tests/fixtures/models/* (plus a sliding-window
//! variant and long packed batches).
//!
//! Outputs are poisoned (every byte 0xFF = NaN in f32/bf16/f16) before each
//! launch, so an element a kernel forgets to write fails the comparison.
//!
//! Without a usable CUDA device every test prints why and returns; set
//! `PADV_REQUIRE_GPU=1` (scripts/gpu-check.sh does) to make that a failure,
//! so a GPU run can never pass vacuously.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use padv::backend::cpu::gemm::matmul_wt_reference;
use padv::backend::cpu::ops::{self, AttnShape, RopeTable};
use padv::backend::cuda::cudarc::driver::CudaSlice;
use padv::backend::cuda::forward::PagedBatch;
use padv::backend::cuda::kernels::KV_BLOCK;
use padv::backend::cuda::{CudaPair, DevTensor, Gpu, probe};
use padv::backend::{Device, PairScorer, SeqRequest, open_pair};
use padv::model::Model;
use padv::model::weights::{DType, Data, Tensor};
use padv::score::TokenScores;
use padv::score::fused::{row_logp, row_stats};
use serde_json::Value;

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// The device, or `None` (with the reason printed) when there is none.
fn gpu() -> Option<Gpu> {
    match probe() {
        Ok(_) => Some(Gpu::new(0).expect("a CUDA device is present but could not be opened")),
        Err(why) => {
            if std::env::var_os("PADV_REQUIRE_GPU").is_some() {
                panic!("PADV_REQUIRE_GPU is set but CUDA is unusable: {why}");
            }
            eprintln!("skipping CUDA test: {why}");
            None
        }
    }
}

/// Deterministic uniform values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.f32() * 0.5 + 0.5) * n as f32) as usize % n.max(1)
    }
}

/// `v` as stored in `dtype` and read back.
fn round(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
    }
}

fn rounded(dtype: DType, v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round(dtype, x)).collect()
}

/// One unit in the last place of `dtype` at `v` (upper bound): a kernel whose
/// f32 result differs from the CPU's by f32 rounding may round to the
/// neighbouring bf16/f16 value, so typed outputs are allowed one ulp.
fn ulp(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => 0.0,
        DType::BF16 => v.abs() * (1.0 / 128.0) + 1e-30,
        DType::F16 => v.abs() * (1.0 / 1024.0) + 6e-8,
    }
}

/// Assert `got ≈ want` elementwise: |Δ| ≤ abs + rel·|want| + ulp(dtype).
fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32, dtype: DType) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * w.abs() + ulp(dtype, w);
        let d = (g - w).abs();
        assert!(
            d <= tol,
            "{what}[{i}]: gpu {g}, cpu {w} (|Δ| {d:e} > {tol:e})"
        );
        if d > worst.0 {
            worst = (d, i);
        }
    }
    eprintln!("{what}: max |Δ| {:.2e} at {}", worst.0, worst.1);
}

fn download(gpu: &Gpu, s: &CudaSlice<f32>) -> Vec<f32> {
    gpu.download(&s.as_view()).unwrap()
}

#[test]
fn embedding_gathers_and_widens_rows_like_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(1);
    let (vocab, h) = (1000, 96);
    let table = rng.vec(vocab * h, 2.0);
    let tokens: Vec<u32> = (0..77).map(|_| rng.below(vocab) as u32).collect();
    for dt in DTYPES {
        let dev_table = DevTensor::from_f32(&gpu, &table, dt).unwrap();
        let dev_tokens = gpu.upload(&tokens).unwrap();
        let mut out = gpu.poisoned_f32(tokens.len() * h).unwrap();
        gpu.embedding(
            &dev_tokens.as_view(),
            &dev_table.all(),
            h,
            &mut out.as_view_mut(),
        )
        .unwrap();
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| rounded(dt, &table[t as usize * h..(t as usize + 1) * h]))
            .collect();
        // Widening is exact.
        assert_close(
            &format!("embedding {dt:?}"),
            &download(&gpu, &out),
            &want,
            0.0,
            0.0,
            DType::F32,
        );
    }
}

#[test]
fn residual_rmsnorm_matches_add_then_cpu_rms_norm_in_place_and_gathered() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(2);
    let (rows, h, eps) = (37, 200, 1e-6);
    let x = rng.vec(rows * h, 3.0);
    let delta = rng.vec(rows * h, 1.0);
    let w = rng.vec(h, 1.5);
    let summed: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
    let mut normed = vec![0.0; rows * h];
    ops::rms_norm(&summed, &w, eps, &mut normed);
    let gather: Vec<i32> = vec![5, 0, 36, 17, 17];
    for dt in DTYPES {
        // In place: x ← x + delta, out = norm(x).
        let mut dx = gpu.upload(&x).unwrap();
        let dd = gpu.upload(&delta).unwrap();
        let dw = gpu.upload(&w).unwrap();
        let mut out = DevTensor::poisoned(&gpu, dt, rows * h).unwrap();
        gpu.residual_rmsnorm(
            &mut dx.as_view_mut(),
            Some(&dd.as_view()),
            &dw.as_view(),
            None,
            &mut out.all_mut(),
            h,
            eps,
        )
        .unwrap();
        // f32 sums in a different order: relative 1e-6 on x and the norm.
        assert_close(
            "rmsnorm x+=delta",
            &download(&gpu, &dx),
            &summed,
            0.0,
            0.0,
            DType::F32,
        );
        assert_close(
            &format!("rmsnorm out {dt:?}"),
            &out.to_f32_vec(&gpu).unwrap(),
            &normed,
            1e-6,
            2e-6,
            dt,
        );

        // Gathered: only listed rows, x untouched.
        let mut dx = gpu.upload(&x).unwrap();
        let dr = gpu.upload(&gather).unwrap();
        let mut out = DevTensor::poisoned(&gpu, dt, gather.len() * h).unwrap();
        gpu.residual_rmsnorm(
            &mut dx.as_view_mut(),
            Some(&dd.as_view()),
            &dw.as_view(),
            Some(&dr.as_view()),
            &mut out.all_mut(),
            h,
            eps,
        )
        .unwrap();
        let want: Vec<f32> = gather
            .iter()
            .flat_map(|&r| normed[r as usize * h..(r as usize + 1) * h].to_vec())
            .collect();
        assert_close(
            &format!("rmsnorm gathered {dt:?}"),
            &out.to_f32_vec(&gpu).unwrap(),
            &want,
            1e-6,
            2e-6,
            dt,
        );
        assert_eq!(download(&gpu, &dx), x, "gathered rmsnorm must not write x");
    }
}

#[test]
fn qkv_rope_matches_bias_qk_norm_and_rope_row_into_shuffled_pages() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(3);
    let lens = [25usize, 15, 40];
    let n: usize = lens.iter().sum();
    let needed: usize = lens.iter().map(|l| l.div_ceil(KV_BLOCK)).sum();
    // Blocks scattered over a pool twice the needed size, in reverse order.
    let order: Vec<usize> = (0..needed).map(|b| 2 * (needed - 1 - b) + 1).collect();
    let layout = PagedBatch::with_blocks(&lens, &order);
    for (heads, kv_heads, hd, with_bias, with_norm) in [
        (4, 2, 32, true, false),
        (4, 2, 32, false, true),
        (2, 1, 128, true, true),
    ] {
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let width = qd + 2 * kvd;
        let qkv = rng.vec(n * width, 2.0);
        let bias = rng.vec(width, 0.5);
        let qn = rng.vec(hd, 1.5);
        let kn = rng.vec(hd, 1.5);
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / hd as f32))
            .collect();
        let table = RopeTable::new(&inv_freq, 64);
        let eps = 1e-6;
        // CPU twin, row by row.
        let mut want_q = vec![0.0; n * qd];
        let mut want_k = vec![0.0; n * kvd];
        let mut want_v = vec![0.0; n * kvd];
        for t in 0..n {
            let mut row: Vec<f32> = qkv[t * width..(t + 1) * width].to_vec();
            if with_bias {
                row.iter_mut().zip(&bias).for_each(|(x, b)| *x += b);
            }
            let (q, rest) = row.split_at_mut(qd);
            let (k, v) = rest.split_at_mut(kvd);
            if with_norm {
                q.chunks_mut(hd)
                    .for_each(|h| ops::rms_norm_row(h, &qn, eps));
                k.chunks_mut(hd)
                    .for_each(|h| ops::rms_norm_row(h, &kn, eps));
            }
            let pos = layout.pos[t] as usize;
            ops::rope_row(q, &table, pos);
            ops::rope_row(k, &table, pos);
            want_q[t * qd..(t + 1) * qd].copy_from_slice(q);
            want_k[t * kvd..(t + 1) * kvd].copy_from_slice(k);
            want_v[t * kvd..(t + 1) * kvd].copy_from_slice(v);
        }
        for dt in DTYPES {
            let d_qkv = gpu.upload(&qkv).unwrap();
            let d_bias = gpu.upload(&bias).unwrap();
            let d_qn = gpu.upload(&qn).unwrap();
            let d_kn = gpu.upload(&kn).unwrap();
            let d_pos = gpu.upload(&layout.pos).unwrap();
            let d_slots = gpu.upload(&layout.slots).unwrap();
            let d_freq = gpu.upload(&inv_freq).unwrap();
            let mut q_out = gpu.poisoned_f32(n * qd).unwrap();
            let pool = layout.pool_rows() * kvd;
            let mut kp = DevTensor::poisoned(&gpu, dt, pool).unwrap();
            let mut vp = DevTensor::poisoned(&gpu, dt, pool).unwrap();
            let bias_view = d_bias.as_view();
            let (qnv, knv) = (d_qn.as_view(), d_kn.as_view());
            gpu.qkv_rope(
                &d_qkv.as_view(),
                with_bias.then_some(&bias_view),
                with_norm.then_some((&qnv, &knv)),
                &d_pos.as_view(),
                &d_slots.as_view(),
                &d_freq.as_view(),
                &mut q_out.as_view_mut(),
                &mut kp.all_mut(),
                &mut vp.all_mut(),
                AttnShape {
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim: hd,
                    window: None,
                },
                eps,
            )
            .unwrap();
            let tag =
                format!("rope h{heads}/{kv_heads} hd{hd} bias {with_bias} norm {with_norm} {dt:?}");
            // sincosf vs libm cos/sin (≤ 2 ulp each) on O(1)-sized values.
            assert_close(
                &format!("{tag} q"),
                &download(&gpu, &q_out),
                &want_q,
                2e-6,
                2e-6,
                DType::F32,
            );
            let (kh, vh) = (kp.to_f32_vec(&gpu).unwrap(), vp.to_f32_vec(&gpu).unwrap());
            let at_slots = |pool: &[f32]| -> Vec<f32> {
                layout
                    .slots
                    .iter()
                    .flat_map(|&s| pool[s as usize * kvd..(s as usize + 1) * kvd].to_vec())
                    .collect()
            };
            assert_close(&format!("{tag} k"), &at_slots(&kh), &want_k, 2e-6, 2e-6, dt);
            assert_close(&format!("{tag} v"), &at_slots(&vh), &want_v, 0.0, 0.0, dt);
        }
    }
}

#[test]
fn paged_attention_matches_the_f64_reference_with_gqa_windows_and_shuffled_blocks() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(4);
    for (heads, kv_heads, hd, window, lens) in [
        (4, 2, 32, None, vec![150usize, 37, 1]),
        (4, 4, 64, Some(17), vec![100]),
        (8, 1, 128, Some(40), vec![70, 33]),
        (2, 1, 256, None, vec![65]),
        (2, 2, 80, None, vec![50, 31]),
        (4, 2, 64, Some(1), vec![20]),
    ] {
        let shape = AttnShape {
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            window,
        };
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let n: usize = lens.iter().sum();
        let needed: usize = lens.iter().map(|l| l.div_ceil(KV_BLOCK)).sum();
        // A fixed shuffle of the blocks over a larger pool.
        let mut order: Vec<usize> = (0..needed + 3).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order.truncate(needed);
        let layout = PagedBatch::with_blocks(&lens, &order);
        let q = rng.vec(n * qd, 1.0);
        let k = rng.vec(n * kvd, 1.0);
        let v = rng.vec(n * kvd, 1.0);
        for dt in DTYPES {
            let (kr, vr) = (rounded(dt, &k), rounded(dt, &v));
            let mut want = Vec::with_capacity(n * qd);
            for (s, &len) in lens.iter().enumerate() {
                let a = layout.seq_start[s] as usize;
                let b = a + len;
                want.extend(ops::attention_reference(
                    &q[a * qd..b * qd],
                    &kr[a * kvd..b * kvd],
                    &vr[a * kvd..b * kvd],
                    0,
                    len,
                    shape,
                ));
            }
            // Scatter K/V rows into their pool slots (NaN elsewhere).
            let rows = layout.pool_rows();
            let mut kp = vec![f32::NAN; rows * kvd];
            let mut vp = vec![f32::NAN; rows * kvd];
            for (t, &slot) in layout.slots.iter().enumerate() {
                let s = slot as usize;
                kp[s * kvd..(s + 1) * kvd].copy_from_slice(&kr[t * kvd..(t + 1) * kvd]);
                vp[s * kvd..(s + 1) * kvd].copy_from_slice(&vr[t * kvd..(t + 1) * kvd]);
            }
            let dkp = DevTensor::from_f32(&gpu, &kp, dt).unwrap();
            let dvp = DevTensor::from_f32(&gpu, &vp, dt).unwrap();
            let dq = gpu.upload(&q).unwrap();
            let table = gpu.upload(&layout.block_table).unwrap();
            let starts = gpu.upload(&layout.seq_start).unwrap();
            let tiles = gpu.upload(&layout.tiles).unwrap();
            let mut out = DevTensor::poisoned(&gpu, dt, n * qd).unwrap();
            gpu.paged_attention(
                &dq.as_view(),
                &dkp.all(),
                &dvp.all(),
                &table.as_view(),
                &starts.as_view(),
                &tiles.as_view(),
                layout.max_blocks,
                &mut out.all_mut(),
                shape,
            )
            .unwrap();
            // f32 online softmax vs the f64 reference: outputs are convex
            // combinations of O(1) values, so 2e-6 absolute covers the f32
            // rounding of scores, exps and sums; typed outputs add one ulp.
            assert_close(
                &format!("attention h{heads}/{kv_heads} hd{hd} window {window:?} {lens:?} {dt:?}"),
                &out.to_f32_vec(&gpu).unwrap(),
                &want,
                2e-6,
                2e-6,
                dt,
            );
        }
    }
}

#[test]
fn silu_mul_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(5);
    let (n, inter) = (33, 300);
    let gate_up = rng.vec(n * 2 * inter, 8.0);
    let mut want = Vec::with_capacity(n * inter);
    for row in gate_up.chunks(2 * inter) {
        let (g, u) = row.split_at(inter);
        let mut g = g.to_vec();
        ops::silu_mul_inplace(&mut g, u);
        want.extend(g);
    }
    for dt in DTYPES {
        let dg = gpu.upload(&gate_up).unwrap();
        let mut out = DevTensor::poisoned(&gpu, dt, n * inter).unwrap();
        gpu.silu_mul(&dg.as_view(), &mut out.all_mut(), inter)
            .unwrap();
        // expf vs the CPU's polynomial exp: a few f32 ulp.
        assert_close(
            &format!("silu_mul {dt:?}"),
            &out.to_f32_vec(&gpu).unwrap(),
            &want,
            1e-6,
            2e-6,
            dt,
        );
    }
}

#[test]
fn cublas_gemm_matches_the_triple_loop_for_every_dtype() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(6);
    let (rows, n, k, ldo) = (37, 300, 72, 305);
    let x = rng.vec(rows * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    for dt in DTYPES {
        let (xr, wr) = (rounded(dt, &x), rounded(dt, &w));
        let shape = [n, k];
        let t = Tensor {
            name: "w",
            shape: &shape,
            data: Data::F32(&wr),
        };
        let want = matmul_wt_reference(&xr, rows, &t);
        let dx = DevTensor::from_f32(&gpu, &x, dt).unwrap();
        let dw = DevTensor::from_f32(&gpu, &w, dt).unwrap();
        let mut out = gpu.poisoned_f32(rows * ldo).unwrap();
        gpu.matmul_wt(
            &dx.all(),
            &dw.all(),
            &mut out.as_view_mut(),
            rows,
            n,
            k,
            ldo,
        )
        .unwrap();
        let got = download(&gpu, &out);
        let got: Vec<f32> = (0..rows)
            .flat_map(|r| got[r * ldo..r * ldo + n].to_vec())
            .collect();
        // Products of rounded operands are exact in f32; only the f32
        // accumulation order differs (k = 72 terms of size ≤ 1).
        assert_close(&format!("gemm {dt:?}"), &got, &want, 2e-5, 1e-5, DType::F32);
    }
}

#[test]
fn fused_logprob_matches_row_stats_and_row_logp() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(7);
    for (vocab, pad, scale) in [
        (7usize, 1usize, 3.0f32),
        (513, 3, 20.0),
        (4099, 1, 0.01),
        (151_936, 0, 30.0),
        (32_000, 8, 10.0),
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
        )
        .unwrap();
        let got = download(&gpu, &out);
        for r in 0..rows {
            let t = targets[r] as usize;
            let p = row_stats(&lp[r * ld..r * ld + vocab], t);
            let q = row_logp(&lr[r * ld..r * ld + vocab], t);
            let g = &got[4 * r..4 * r + 4];
            // Both sides reduce ~vocab f32 exps in different orders: the
            // CPU's own fused-vs-naive test allows 2e-5; log-probs here reach
            // lse ≈ 40, where one f32 ulp is 4e-6.
            let tag = format!("fused vocab {vocab} row {r}");
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

// ---------------------------------------------------------------- full models

/// The checkout's fixtures: `CARGO_MANIFEST_DIR` at run time when set (a
/// test binary carried to a GPU machine by scripts/gpu-check.sh), else the
/// directory this binary was built from.
fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/fixtures")
}

fn fixture_records(name: &str) -> Vec<Vec<u32>> {
    let text =
        std::fs::read_to_string(fixtures().join(format!("expected/tiny_{name}.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// The fixture records, one record with a partial score mask, an empty and
/// a one-token sequence, and two long sequences cycling the records' tokens
/// (many attention tiles and KV blocks per sequence).
fn batch_for(records: &[Vec<u32>]) -> Vec<SeqRequest> {
    let mut batch: Vec<SeqRequest> = records
        .iter()
        .map(|ids| SeqRequest {
            token_ids: ids.clone(),
            score_mask: None,
        })
        .collect();
    let all: Vec<u32> = records.concat();
    batch.push(SeqRequest {
        token_ids: records[0].clone(),
        score_mask: Some((0..records[0].len()).map(|t| t % 3 == 1).collect()),
    });
    batch.push(SeqRequest::default());
    batch.push(SeqRequest {
        token_ids: vec![records[0][0]],
        score_mask: None,
    });
    for len in [300usize, 517] {
        batch.push(SeqRequest {
            token_ids: all.iter().cycle().take(len).copied().collect(),
            score_mask: None,
        });
    }
    batch
}

/// Compare two scorers' outputs: NaN exactly where the other is NaN, values
/// within `tol` (entropy relative to max(1, H)).
fn assert_scores_close(name: &str, gpu: &[TokenScores], cpu: &[TokenScores], tol: f32) {
    let mut worst = 0.0f32;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        for (key, a, b) in [
            ("logp_policy", &g.logp_policy, &c.logp_policy),
            ("logp_reference", &g.logp_reference, &c.logp_reference),
            ("entropy_policy", &g.entropy_policy, &c.entropy_policy),
            ("self_certainty", &g.self_certainty, &c.self_certainty),
        ] {
            assert_eq!(a.len(), b.len(), "{name} seq {i} {key}: length");
            for (t, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
                assert_eq!(
                    x.is_nan(),
                    y.is_nan(),
                    "{name} seq {i} {key}[{t}]: gpu {x}, cpu {y}"
                );
                if y.is_nan() {
                    continue;
                }
                let d = (x - y).abs();
                let scale = if key == "entropy_policy" {
                    y.abs().max(1.0)
                } else {
                    1.0
                };
                assert!(
                    d <= tol * scale,
                    "{name} seq {i} {key}[{t}]: gpu {x}, cpu {y}"
                );
                worst = worst.max(d);
            }
        }
    }
    eprintln!(
        "{name}: {} sequences, max |Δ| gpu vs cpu = {worst:.2e}",
        gpu.len()
    );
}

fn compare_pair(name: &str, dir: &Path, records: &[Vec<u32>], tol: f32) {
    let policy = Arc::new(Model::load(&dir.join("trained")).unwrap());
    let reference = Arc::new(Model::load(&dir.join("ref")).unwrap());
    let batch = batch_for(records);
    let mut cpu = open_pair(Device::Cpu, policy.clone(), reference.clone()).unwrap();
    let mut gpu = CudaPair::new(0, policy, reference).unwrap();
    eprintln!("{name}: {}", gpu.describe());
    let want = cpu.score(&batch).unwrap();
    let got = gpu.score(&batch).unwrap();
    assert_scores_close(name, &got, &want, tol);
    // Scoring twice gives the same bits (no state leaks between batches).
    let bits = |s: &[TokenScores]| -> Vec<u32> {
        s.iter()
            .flat_map(|x| {
                [
                    &x.logp_policy,
                    &x.logp_reference,
                    &x.entropy_policy,
                    &x.self_certainty,
                ]
                .into_iter()
                .flatten()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(
        bits(&gpu.score(&batch).unwrap()),
        bits(&got),
        "{name}: second run differs"
    );
}

// f32 checkpoints run f32 end to end on both backends; they differ only in
// summation order (cuBLAS vs the CPU GEMM, tree vs sequential reductions) and
// exp implementations, ~1e-6 relative on logits of size ≤ 30, which is the
// same 1e-4 budget the HF parity harness uses against transformers.
const F32_TOL: f32 = 1e-4;
// bf16 checkpoints: the GPU stores GEMM inputs in bf16 (tensor-core operands),
// the CPU keeps them in f32, so each layer's activations carry one bf16
// rounding (2⁻⁹ ≈ 2e-3 relative) the CPU does not: a few 1e-3 on logits of
// size ~10, through 2 layers. 3e-2 catches any real bug (those are O(1)).
const BF16_TOL: f32 = 3e-2;

#[test]
fn every_fixture_pair_scores_like_the_cpu_backend() {
    let Some(_gpu) = gpu() else { return };
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "fixture pairs missing: {names:?}");
    for name in names {
        let dir = fixtures().join("models").join(&name);
        let tol = if name.contains("bf16") {
            BF16_TOL
        } else {
            F32_TOL
        };
        compare_pair(&name, &dir, &fixture_records(&name), tol);
    }
}

#[test]
fn sliding_window_pair_scores_like_the_cpu_backend() {
    let Some(_gpu) = gpu() else { return };
    // The mistral fixture with an 8-token window on every layer.
    let tmp = tempfile::tempdir().unwrap();
    for side in ["ref", "trained"] {
        let src = fixtures().join("models/mistral").join(side);
        let dst = tmp.path().join(side);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["model.safetensors", "config.json"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let cfg = dst.join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["sliding_window"] = Value::from(8);
        std::fs::write(&cfg, v.to_string()).unwrap();
    }
    compare_pair(
        "mistral window 8",
        tmp.path(),
        &fixture_records("mistral"),
        F32_TOL,
    );
}

#[test]
fn f32_fixture_pairs_match_transformers_on_the_gpu() {
    let Some(_gpu) = gpu() else { return };
    for name in ["llama", "llama3scaled", "qwen2", "mistral", "qwen3"] {
        let dir = fixtures().join("models").join(name);
        let policy = Arc::new(Model::load(&dir.join("trained")).unwrap());
        let reference = Arc::new(Model::load(&dir.join("ref")).unwrap());
        let mut scorer = CudaPair::new(0, policy, reference).unwrap();
        let text =
            std::fs::read_to_string(fixtures().join(format!("expected/tiny_{name}.json"))).unwrap();
        let expected: Value = serde_json::from_str(&text).unwrap();
        let records = expected["records"].as_array().unwrap();
        let batch: Vec<SeqRequest> = fixture_records(name)
            .into_iter()
            .map(|token_ids| SeqRequest {
                token_ids,
                score_mask: None,
            })
            .collect();
        let scores = scorer.score(&batch).unwrap();
        let mut worst = 0.0f64;
        for (r, s) in records.iter().zip(&scores) {
            for (key, got) in [
                ("logprobs_trained", &s.logp_policy),
                ("logprobs_ref", &s.logp_reference),
            ] {
                for (t, w) in r[key].as_array().unwrap().iter().enumerate().skip(1) {
                    let d = (w.as_f64().unwrap() - got[t] as f64).abs();
                    worst = worst.max(d);
                    assert!(
                        d <= 1e-4,
                        "{name} {key}[{t}]: gpu {}, transformers {w}",
                        got[t]
                    );
                }
            }
        }
        eprintln!("{name}: max |Δ logp| gpu vs transformers = {worst:.2e}");
    }
}

#[test]
fn auto_device_picks_the_gpu_when_one_is_present() {
    let Some(gpu) = gpu() else { return };
    let arch = gpu.arch();
    eprintln!("{} (compute capability {arch:?})", gpu.describe());
    if matches!(arch.0, 8 | 9) {
        assert!(
            gpu.describe().contains("cubin"),
            "sm_8x/9x must load an embedded cubin"
        );
    }
    let dir = fixtures().join("models/llama");
    let p = Arc::new(Model::load(&dir.join("trained")).unwrap());
    let r = Arc::new(Model::load(&dir.join("ref")).unwrap());
    let scorer = open_pair(Device::Auto, p.clone(), r.clone()).unwrap();
    assert!(
        scorer.describe().starts_with("cuda:0"),
        "{}",
        scorer.describe()
    );
    let err = open_pair(Device::Cuda(999), p, r)
        .err()
        .expect("no device 999");
    assert!(err.to_string().contains("cuda:999"), "{err}");
}
