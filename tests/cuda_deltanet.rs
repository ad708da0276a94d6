//! The gated-DeltaNet kernels (kernels/deltanet.cu) on the GPU against the
//! CPU: the convolution, norms and gates against direct loops in f64, the
//! recurrence against `cpu::delta_rule::recurrent` on the GPU's own
//! prepared inputs, the gated norm against `ops::rms_norm_row` · silu; at the
//! Qwen 3.5 fixture's head sizes and at Qwen 3.5's own (16 key heads and 32
//! value heads of 128), over three packed sequences, one continuing from a
//! cached convolution tail and state.
//!
//! Without a usable CUDA device every test prints why and returns;
//! `PADV_REQUIRE_GPU=1` makes that a failure.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use padv::backend::cpu::delta_rule::{HeadInputs, recurrent};
use padv::backend::cpu::ops;
use padv::backend::cuda::DevTensor;
use padv::backend::cuda::delta_chunk::{DeltaChunks, DeltaRulePath};
use padv::model::config::DeltaNetDesc;
use padv::model::weights::DType;

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
fn deltanet_kernels_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for (kh, vh, dk, dv) in [(2, 4, 16, 16), (16, 32, 128, 128)] {
        let d = DeltaNetDesc {
            num_k_heads: kh,
            num_v_heads: vh,
            k_head_dim: dk,
            v_head_dim: dv,
            conv_kernel: 4,
        };
        let (cd, kd, vd, k) = (d.conv_dim(), d.key_dim(), d.value_dim(), d.conv_kernel);
        let lens = [23usize, 1, 150];
        let mut seq_start = vec![0i32];
        let mut row_seq = Vec::new();
        for (s, &l) in lens.iter().enumerate() {
            seq_start.push(seq_start[s] + l as i32);
            row_seq.extend(std::iter::repeat_n(s as i32, l));
        }
        let n = row_seq.len();
        let mut rng = Rng(40 + dk as u64);
        let x = rng.vec(n * cd, 1.0);
        let w_t = rng.vec(k * cd, 0.6);
        let (b, a) = (rng.vec(n * vh, 2.0), rng.vec(n * vh, 2.0));
        let (a_log, dt_bias) = (rng.vec(vh, 1.0), rng.vec(vh, 1.0));
        let (z, nw) = (rng.vec(n * vd, 2.0), rng.vec(dv, 1.5));
        let mut tails = vec![0.0f32; lens.len() * (k - 1) * cd];
        let mut init = vec![0.0f32; lens.len() * vh * dk * dv];
        let (tl, sl) = ((k - 1) * cd, vh * dk * dv);
        tails[2 * tl..].copy_from_slice(&rng.vec(tl, 1.0));
        init[2 * sl..].copy_from_slice(&rng.vec(sl, 0.3));

        // Convolution, q/k norms, β and g, directly.
        let q_scale = (dk as f64).powf(-0.5);
        let mut want_mixed = vec![0.0f32; n * cd];
        for r in 0..n {
            let s = row_seq[r] as usize;
            let (first, local) = (seq_start[s] as usize, r - seq_start[s] as usize);
            let mut row = vec![0.0f64; cd];
            for (c, o) in row.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for j in 0..k {
                    let v = match (local + j).checked_sub(k - 1) {
                        Some(src) => x[(first + src) * cd + c],
                        None => tails[(s * (k - 1) + local + j) * cd + c],
                    };
                    acc += w_t[j * cd + c] as f64 * v as f64;
                }
                *o = silu(acc);
            }
            for (h, head) in row[..2 * kd].chunks_mut(dk).enumerate() {
                let ss: f64 = head.iter().map(|v| v * v).sum();
                let f = if h < kh { q_scale } else { 1.0 } / (ss + 1e-6).sqrt();
                head.iter_mut().for_each(|v| *v *= f);
            }
            for (o, v) in want_mixed[r * cd..(r + 1) * cd].iter_mut().zip(&row) {
                *o = *v as f32;
            }
        }
        let want_beta: Vec<f32> = b.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
        let want_g: Vec<f32> = (0..n * vh)
            .map(|i| {
                let t = (a[i] + dt_bias[i % vh]) as f64;
                let sp = if t > 20.0 { t } else { t.exp().ln_1p() };
                (-(a_log[i % vh] as f64).exp() * sp) as f32
            })
            .collect();

        let up = |v: &[f32]| gpu.upload(v).unwrap();
        let (dx, dw, dtails) = (up(&x), up(&w_t), up(&tails));
        let (dss, drs) = (
            gpu.upload(&seq_start).unwrap(),
            gpu.upload(&row_seq).unwrap(),
        );
        let (mut db, mut da, dal, ddt) = (up(&b), up(&a), up(&a_log), up(&dt_bias));
        let mut mixed = gpu.poisoned_f32(n * cd).unwrap();
        gpu.deltanet_conv(
            &dx.as_view(),
            &dw.as_view(),
            Some(&dtails.as_view()),
            &dss.as_view(),
            &drs.as_view(),
            &mut mixed.as_view_mut(),
            &d,
        )
        .unwrap();
        let (alv, dtv) = (dal.as_view(), ddt.as_view());
        gpu.deltanet_prep(
            &mut mixed.as_view_mut(),
            &mut db.as_view_mut(),
            &mut da.as_view_mut(),
            (&alv, &dtv),
            &d,
        )
        .unwrap();
        let tag = format!("deltanet kh {kh} vh {vh} dk {dk} dv {dv}");
        // f32 sums of K terms and exps against f64: relative ~1e-6.
        let got_mixed = download(&gpu, &mixed);
        assert_close(
            &format!("{tag} conv"),
            &got_mixed,
            &want_mixed,
            2e-6,
            2e-6,
            DType::F32,
        );
        let (got_beta, got_g) = (download(&gpu, &db), download(&gpu, &da));
        assert_close(
            &format!("{tag} beta"),
            &got_beta,
            &want_beta,
            1e-6,
            1e-6,
            DType::F32,
        );
        assert_close(&format!("{tag} g"), &got_g, &want_g, 1e-6, 2e-6, DType::F32);

        // The recurrence on the GPU's own inputs, against the CPU's.
        let dinit = up(&init);
        let (gv, bv) = (da.as_view(), db.as_view());
        // Snapshots (a prefix cache's filled blocks): after each sequence's
        // last row into slot `seqs − 1 − s`, which must equal its final state.
        let seqs = lens.len();
        let mut at = vec![-1i32; n];
        for s in 0..seqs {
            at[seq_start[s + 1] as usize - 1] = (seqs - 1 - s) as i32;
        }
        let dat = gpu.upload(&at).unwrap();
        let mut want_o = vec![0.0f32; n * vd];
        let mut want_fin = init.clone();
        for (s, &len) in lens.iter().enumerate() {
            let r0 = seq_start[s] as usize;
            for j in 0..vh {
                let kj = j / (vh / kh);
                let gather = |at: usize, w: usize| -> Vec<f32> {
                    (r0..r0 + len)
                        .flat_map(|r| got_mixed[r * cd + at..r * cd + at + w].to_vec())
                        .collect()
                };
                let (q, kk, v) = (
                    gather(kj * dk, dk),
                    gather(kd + kj * dk, dk),
                    gather(2 * kd + j * dv, dv),
                );
                let col =
                    |m: &[f32]| -> Vec<f32> { (r0..r0 + len).map(|r| m[r * vh + j]).collect() };
                let (g, beta) = (col(&got_g), col(&got_beta));
                let st = &mut want_fin[(s * vh + j) * dk * dv..(s * vh + j + 1) * dk * dv];
                let mut o = vec![0.0f32; len * dv];
                let inputs = HeadInputs {
                    q: &q,
                    k: &kk,
                    v: &v,
                    g: &g,
                    beta: &beta,
                    dk,
                    dv,
                };
                recurrent(inputs, st, &mut o);
                for (t, row) in o.chunks(dv).enumerate() {
                    want_o[(r0 + t) * vd + j * dv..(r0 + t) * vd + (j + 1) * dv]
                        .copy_from_slice(row);
                }
            }
        }
        // Token by token, and in chunks (chunks cut at the snapshot rows
        // and, for the last sequence, where its position after 40 cached
        // tokens reaches a multiple of 64).
        let mut out = gpu.poisoned_f32(n * vd).unwrap();
        let mut got_o = Vec::new();
        for rule in [DeltaRulePath::Recurrent, DeltaRulePath::Chunked] {
            let tag = format!("{tag} {}", rule.name());
            let mut fin = gpu.poisoned_f32(init.len()).unwrap();
            let mut snaps = gpu.poisoned_f32(init.len()).unwrap();
            let cuts: Vec<usize> = (1..=seqs).map(|s| seq_start[s] as usize - 1).collect();
            let mut chunks = (rule.chunked())
                .then(|| DeltaChunks::new(&gpu, &d, &seq_start, &[0, 0, 40], &cuts).unwrap());
            gpu.gated_delta_rule(
                &mixed.as_view(),
                (&gv, &bv),
                &dss.as_view(),
                chunks.as_mut(),
                Some(&dinit.as_view()),
                Some(&mut fin.as_view_mut()),
                Some((&dat.as_view(), &mut snaps.as_view_mut())),
                &mut out.as_view_mut(),
                &d,
            )
            .unwrap();
            // f32 sums of dk terms in another order, over ≤ 150 steps.
            got_o = download(&gpu, &out);
            assert_close(
                &format!("{tag} recurrence"),
                &got_o,
                &want_o,
                1e-5,
                1e-5,
                DType::F32,
            );
            assert_close(
                &format!("{tag} state"),
                &download(&gpu, &fin),
                &want_fin,
                1e-5,
                1e-5,
                DType::F32,
            );
            let per = vh * dk * dv;
            let got_snaps = download(&gpu, &snaps);
            let reordered: Vec<f32> = (0..seqs)
                .rev()
                .flat_map(|s| want_fin[s * per..(s + 1) * per].to_vec())
                .collect();
            assert_close(
                &format!("{tag} snapshots"),
                &got_snaps,
                &reordered,
                1e-5,
                1e-5,
                DType::F32,
            );
        }

        // The gated norm, in each dtype.
        let dz = up(&z);
        let dnw = up(&nw);
        let mut want = got_o.clone();
        for (oh, zh) in want.chunks_mut(dv).zip(z.chunks(dv)) {
            ops::rms_norm_row(oh, &nw, 1e-6);
            for (v, &g) in oh.iter_mut().zip(zh) {
                *v *= silu(g as f64) as f32;
            }
        }
        for dt in DTYPES {
            let mut act = DevTensor::poisoned(&gpu, dt, n * vd).unwrap();
            gpu.gated_rmsnorm_silu(
                &out.as_view(),
                &dz.as_view(),
                &dnw.as_view(),
                &mut act.all_mut(),
                &d,
                1e-6,
            )
            .unwrap();
            let got = act.to_f32_vec(&gpu).unwrap();
            assert_close(
                &format!("{tag} gated norm {dt:?}"),
                &got,
                &want,
                2e-6,
                4e-6,
                dt,
            );
        }
    }
}
