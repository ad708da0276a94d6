//! Every CUDA kernel against its CPU twin on fresh random inputs, for each
//! weight dtype (f32, bf16, f16): embedding, residual RMSNorm, q/k/v RoPE
//! into a shuffled paged pool, paged attention (GQA, MQA, windows, several
//! head dims; partial rotary and output gates; Gemma's v norm and
//! K/V-sharing layers), SiLU- and GELU-gates, Gemma's per-layer input gate,
//! the sigmoid gate of gated attention, the cuBLAS GEMM, and on Hopper the
//! wgmma products in attention's layouts (the scoring kernels:
//! tests/cuda_scoring_parity.rs).
//!
//! Outputs are poisoned (every byte 0xFF = NaN in f32/bf16/f16) before each
//! launch, so an element a kernel forgets to write fails the comparison.
//! Tolerances are stated at each check. Without a usable CUDA device every
//! test prints why and returns; `PADV_REQUIRE_GPU=1` makes that a failure.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use padv::backend::cpu::gemm::matmul_wt_reference;
use padv::backend::cpu::mlp::{act_mul_inplace, gelu_tanh};
use padv::backend::cpu::ops::{self, AttnShape, RopeTable};
use padv::backend::cuda::DevTensor;
use padv::backend::cuda::forward::PagedBatch;
use padv::backend::cuda::kernels::{AttnKernel, KV_BLOCK};
use padv::backend::cuda::weights::DevicePle;
use padv::model::config::{Act, PerLayerEmbed, Rope};
use padv::model::weights::{DType, Data, Tensor};

#[test]
fn embedding_gathers_and_widens_rows_like_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(1);
    let (vocab, h) = (1000, 96);
    let table = rng.vec(vocab * h, 2.0);
    let tokens: Vec<u32> = (0..77).map(|_| rng.below(vocab) as u32).collect();
    // 1, and Gemma's √hidden as a bf16 run applies it.
    for (dt, scale) in DTYPES.into_iter().flat_map(|d| [(d, 1.0f32), (d, 6.9375)]) {
        let dev_table = DevTensor::from_f32(&gpu, &table, dt).unwrap();
        let dev_tokens = gpu.upload(&tokens).unwrap();
        let mut out = gpu.poisoned_f32(tokens.len() * h).unwrap();
        gpu.embedding(
            &dev_tokens.as_view(),
            &dev_table.all(),
            h,
            scale,
            &mut out.as_view_mut(),
        )
        .unwrap();
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| rounded(dt, &table[t as usize * h..(t as usize + 1) * h]))
            .map(|v| v * scale)
            .collect();
        // Widening is exact, and so is one f32 product.
        assert_close(
            &format!("embedding {dt:?} × {scale}"),
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
    let (rows, eps) = (37, 1e-6);
    let gather: Vec<i32> = vec![5, 0, 36, 17, 17];
    // Widths: the vector path with up to 2 and 4 runs of 4 per thread
    // (200: 32 threads; 2056: 160), and the strided path (203: not a
    // multiple of 4).
    for h in [200, 2056, 203] {
        let x = rng.vec(rows * h, 3.0);
        let delta = rng.vec(rows * h, 1.0);
        let w = rng.vec(h, 1.5);
        let wd = rng.vec(h, 1.5);
        // (delta normed first: a post-norm; the sum normed: a pre-norm; the
        // sum's factor): Llama's pre-norm, Olmo 3's post-norm, Gemma's
        // sandwich, and with its layer scalar.
        for (post, pre, scale) in [
            (false, true, 1.0f32),
            (true, false, 1.0),
            (true, true, 1.0),
            (true, true, 0.83),
        ] {
            for dt in DTYPES {
                // CPU twin on delta as the GPU holds it (in `dt`):
                // x = (x + [rms_norm](delta)) · scale, out = [rms_norm](x).
                let mut d = rounded(dt, &delta);
                if post {
                    ops::rms_norm_inplace(&mut d, &wd, eps);
                }
                let summed: Vec<f32> = x.iter().zip(&d).map(|(a, b)| (a + b) * scale).collect();
                let mut normed = summed.clone();
                if pre {
                    ops::rms_norm(&summed, &w, eps, &mut normed);
                }
                let tag = format!("rmsnorm {h} post {post} pre {pre} × {scale} {dt:?}");
                // In place: x ← x + [norm](delta), out = [norm](x).
                let mut dx = gpu.upload(&x).unwrap();
                let dd = DevTensor::from_f32(&gpu, &delta, dt).unwrap();
                let (dw, dwd) = (gpu.upload(&w).unwrap(), gpu.upload(&wd).unwrap());
                let (wv, wdv) = (dw.as_view(), dwd.as_view());
                let dv = dd.all();
                let mut out = DevTensor::poisoned(&gpu, dt, rows * h).unwrap();
                gpu.residual_rmsnorm(
                    &mut dx.as_view_mut(),
                    Some((&dv, post.then_some(&wdv), scale)),
                    pre.then_some(&wv),
                    None,
                    &mut out.all_mut(),
                    h,
                    eps,
                )
                .unwrap();
                // f32 sums in a different order: relative 1e-6 on x and the
                // norms (exact when nothing is normed first).
                let (a, r) = if post { (2e-6, 2e-6) } else { (0.0, 0.0) };
                let got_x = download(&gpu, &dx);
                assert_close(&format!("{tag} x"), &got_x, &summed, a, r, DType::F32);
                let got = out.to_f32_vec(&gpu).unwrap();
                assert_close(&format!("{tag} out"), &got, &normed, 2e-6, 2e-6, dt);

                // Gathered: only listed rows, x untouched.
                let mut dx = gpu.upload(&x).unwrap();
                let dr = gpu.upload(&gather).unwrap();
                let mut out = DevTensor::poisoned(&gpu, dt, gather.len() * h).unwrap();
                gpu.residual_rmsnorm(
                    &mut dx.as_view_mut(),
                    Some((&dv, post.then_some(&wdv), scale)),
                    pre.then_some(&wv),
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
                let got = out.to_f32_vec(&gpu).unwrap();
                assert_close(&format!("{tag} gathered"), &got, &want, 2e-6, 2e-6, dt);
                assert_eq!(download(&gpu, &dx), x, "gathered rmsnorm must not write x");
            }
        }
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
    // (heads, kv_heads, head_dim, bias, q/k norm, full-width norm, RoPE
    // factor, rotary dims, output gate, v norm): Qwen2, Qwen3, both, Olmo
    // 3's full layers (q/k norms over the whole projection, YaRN's
    // attention factor), Qwen 3.5's gated attention (a quarter of each head
    // rotated), Gemma 4 (weightless v norm) and a Gemma layer that reads
    // another's K/V (kv_heads 0 here: q alone, the pools untouched).
    for (heads, kv_heads, hd, with_bias, with_norm, full, factor, rot, gated, vn) in [
        (4, 2, 32, true, false, false, 1.0, 32, false, false),
        (4, 2, 32, false, true, false, 1.0, 32, false, false),
        (2, 1, 128, true, true, false, 1.0, 128, false, false),
        (4, 2, 12, false, true, true, 1.2079, 12, false, false),
        (4, 2, 16, true, true, false, 1.0, 4, true, false),
        (4, 2, 32, false, true, false, 1.0, 32, false, true),
        (4, 0, 32, false, true, false, 1.0, 32, false, false),
    ] {
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let qw = if gated { 2 * qd } else { qd };
        let width = qw + 2 * kvd;
        let qkv = rng.vec(n * width, 2.0);
        let bias = rng.vec(width, 0.5);
        let (qn_len, kn_len) = if full { (qd, kvd) } else { (hd, hd) };
        let qn = rng.vec(qn_len, 1.5);
        let kn = rng.vec(kn_len, 1.5);
        let inv_freq: Vec<f32> = (0..rot / 2)
            .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / rot as f32))
            .collect();
        let rope = Rope {
            inv_freq: inv_freq.clone(),
            rotary_dim: rot,
            attention_factor: factor,
        };
        let table = RopeTable::for_rope(&rope, hd, 64);
        let eps = 1e-6;
        for dt in DTYPES {
            // CPU twin, row by row, on the projection rounded to the
            // kernel's input dtype (the GEMM writes it in the compute dtype).
            let qkv = rounded(dt, &qkv);
            let mut want_q = vec![0.0; n * qd];
            let mut want_k = vec![0.0; n * kvd];
            let mut want_v = vec![0.0; n * kvd];
            let mut want_gate = vec![0.0; n * qd];
            for t in 0..n {
                let mut row: Vec<f32> = qkv[t * width..(t + 1) * width].to_vec();
                if with_bias {
                    row.iter_mut().zip(&bias).for_each(|(x, b)| *x += b);
                }
                if gated {
                    // q_proj gives per head [query | gate]: queries first, then gates.
                    let (qg, rest) = row.split_at(qw);
                    let (mut q, mut g): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
                    for pair in qg.chunks(2 * hd) {
                        q.extend_from_slice(&pair[..hd]);
                        g.extend_from_slice(&pair[hd..]);
                    }
                    want_gate[t * qd..(t + 1) * qd].copy_from_slice(&g);
                    row = [q, rest.to_vec()].concat();
                }
                let (q, rest) = row.split_at_mut(qd);
                let (k, v) = rest.split_at_mut(kvd);
                if with_norm {
                    q.chunks_mut(qn_len)
                        .for_each(|h| ops::rms_norm_row(h, &qn, eps));
                    k.chunks_mut(kn_len)
                        .for_each(|h| ops::rms_norm_row(h, &kn, eps));
                }
                if vn {
                    v.chunks_mut(hd)
                        .for_each(|h| ops::rms_norm_row(h, &vec![1.0; hd], eps));
                }
                let pos = layout.pos[t] as usize;
                ops::rope_row(q, &table, pos);
                ops::rope_row(k, &table, pos);
                want_q[t * qd..(t + 1) * qd].copy_from_slice(q);
                want_k[t * kvd..(t + 1) * kvd].copy_from_slice(k);
                want_v[t * kvd..(t + 1) * kvd].copy_from_slice(v);
            }
            let d_qkv = DevTensor::from_f32(&gpu, &qkv, dt).unwrap();
            let d_bias = gpu.upload(&bias).unwrap();
            let d_qn = gpu.upload(&qn).unwrap();
            let d_kn = gpu.upload(&kn).unwrap();
            let d_pos = gpu.upload(&layout.pos).unwrap();
            let d_slots = gpu.upload(&layout.slots).unwrap();
            let d_freq = gpu.upload(&inv_freq).unwrap();
            let mut q_out = DevTensor::poisoned(&gpu, dt, n * qd).unwrap();
            let mut gate = gpu.poisoned_f32(n * qd).unwrap();
            let mut gate_view = gate.as_view_mut();
            let pool = layout.pool_rows() * kvd.max(hd);
            let mut kp = DevTensor::poisoned(&gpu, dt, pool).unwrap();
            let mut vp = DevTensor::poisoned(&gpu, dt, pool).unwrap();
            let bias_view = d_bias.as_view();
            let (qnv, knv) = (d_qn.as_view(), d_kn.as_view());
            let written = layout.pool_rows() * kvd;
            gpu.qkv_rope(
                &d_qkv.all(),
                with_bias.then_some(&bias_view),
                (
                    with_norm.then_some(&qnv),
                    (with_norm && kv_heads > 0).then_some(&knv),
                ),
                &d_pos.as_view(),
                &d_slots.as_view(),
                (&d_freq.as_view(), factor),
                &mut q_out.all_mut(),
                gated.then_some(&mut gate_view),
                &mut kp.view_mut(0, written).unwrap(),
                &mut vp.view_mut(0, written).unwrap(),
                AttnShape::new(heads, kv_heads, hd, None),
                vn,
                eps,
            )
            .unwrap();
            let tag = format!(
                "rope h{heads}/{kv_heads} hd{hd} bias {with_bias} norm {with_norm} full {full} \
                 factor {factor} rotary {rot} gated {gated} v norm {vn} {dt:?}"
            );
            if gated {
                let got = download(&gpu, &gate);
                assert_close(
                    &format!("{tag} gate"),
                    &got,
                    &want_gate,
                    0.0,
                    0.0,
                    DType::F32,
                );
            }
            // sincosf vs libm cos/sin (≤ 2 ulp each) on O(1)-sized values,
            // then q stored in the pools' dtype.
            assert_close(
                &format!("{tag} q"),
                &q_out.to_f32_vec(&gpu).unwrap(),
                &want_q,
                2e-6,
                2e-6,
                dt,
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
            let v_tol = if vn { 2e-6 } else { 0.0 };
            assert_close(
                &format!("{tag} v"),
                &at_slots(&vh),
                &want_v,
                v_tol,
                v_tol,
                dt,
            );
            if kv_heads == 0 {
                let untouched = |p: &[f32]| p.iter().all(|x| x.is_nan());
                assert!(untouched(&kh) && untouched(&vh), "{tag}: wrote the pools");
            }
        }
    }
}

/// Every attention case, its sequences scored whole and with a cached
/// prefix (`past`: the first whole blocks of about half of each sequence
/// already in the pool, only the rest packed as queries, as the prefix
/// cache runs it). Head dims 256 and 512 (Qwen 3.5, Gemma 4) take the
/// tensor-core kernel's Q-in-shared-memory and split-output paths; scale 1
/// is Gemma 4's.
#[test]
fn paged_attention_matches_the_f64_reference_with_gqa_windows_shuffled_blocks_and_past() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(4);
    // (heads, kv_heads, head_dim, window, scale (None: 1/√hd), lengths)
    let cases = [
        (4, 2, 32, None, None, vec![150usize, 37, 1]),
        (4, 4, 64, Some(17), None, vec![100]),
        (8, 1, 128, Some(40), None, vec![70, 33]),
        (2, 1, 256, None, None, vec![65]),
        (4, 2, 256, Some(100), None, vec![300, 37]),
        (2, 1, 512, None, None, vec![65]),
        (4, 2, 512, Some(100), Some(1.0), vec![200, 17]),
        (2, 2, 80, None, None, vec![50, 31]),
        (4, 2, 64, Some(1), Some(1.0), vec![20]),
        (14, 2, 64, None, None, vec![257, 64]),
        (4, 2, 128, None, None, vec![300, 5]),
    ];
    for ((heads, kv_heads, hd, window, scale, lens), cached) in cases
        .iter()
        .flat_map(|c| [(c.clone(), false), (c.clone(), true)])
    {
        let mut shape = AttnShape::new(heads, kv_heads, hd, window);
        // Scale 1 with q in ±1/16 keeps the scores O(1) up to head_dim 512,
        // so the softmax does not collapse onto one key.
        let q_mag = match scale {
            Some(s) => {
                shape.scale = s;
                1.0 / 16.0
            }
            None => 1.0,
        };
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let total: usize = lens.iter().sum();
        let seqs: Vec<(usize, usize)> = lens
            .iter()
            .map(|&l| {
                let past = if cached {
                    l / 2 / KV_BLOCK * KV_BLOCK
                } else {
                    0
                };
                (past, l - past)
            })
            .collect();
        let needed: usize = lens.iter().map(|l| l.div_ceil(KV_BLOCK)).sum();
        // A fixed shuffle of the blocks over a larger pool.
        let mut order: Vec<usize> = (0..needed + 3).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order.truncate(needed);
        let layout = PagedBatch::with_past_blocks(&seqs, &order);
        let n = layout.tokens();
        let q = rng.vec(total * qd, q_mag);
        let k = rng.vec(total * kvd, 1.0);
        let v = rng.vec(total * kvd, 1.0);
        // Sequence s's tokens start at row `first[s]` of q/k/v.
        let first: Vec<usize> = lens
            .iter()
            .scan(0, |a, &l| Some(std::mem::replace(a, *a + l)))
            .collect();
        // The packed (new) queries only.
        let q_new: Vec<f32> = seqs
            .iter()
            .zip(&first)
            .flat_map(|(&(past, new), &f)| q[(f + past) * qd..(f + past + new) * qd].to_vec())
            .collect();
        for dt in DTYPES {
            // q, k and v as the kernels receive them: in the cache dtype.
            let (qr, kr, vr) = (rounded(dt, &q), rounded(dt, &k), rounded(dt, &v));
            let mut want = Vec::with_capacity(n * qd);
            for (s, &len) in lens.iter().enumerate() {
                let (a, b) = (first[s], first[s] + len);
                let all = ops::attention_reference(
                    &qr[a * qd..b * qd],
                    &kr[a * kvd..b * kvd],
                    &vr[a * kvd..b * kvd],
                    0,
                    len,
                    shape,
                );
                want.extend_from_slice(&all[seqs[s].0 * qd..]);
            }
            // Scatter every position's K/V rows (cached ones too) into its
            // pool slot through the block table (NaN elsewhere).
            let rows = layout.pool_rows();
            let mut kp = vec![f32::NAN; rows * kvd];
            let mut vp = vec![f32::NAN; rows * kvd];
            for (s, &len) in lens.iter().enumerate() {
                for i in 0..len {
                    let block = layout.block_table[s * layout.max_blocks + i / KV_BLOCK] as usize;
                    let slot = block * KV_BLOCK + i % KV_BLOCK;
                    let t = first[s] + i;
                    kp[slot * kvd..(slot + 1) * kvd].copy_from_slice(&kr[t * kvd..(t + 1) * kvd]);
                    vp[slot * kvd..(slot + 1) * kvd].copy_from_slice(&vr[t * kvd..(t + 1) * kvd]);
                }
            }
            let dkp = DevTensor::from_f32(&gpu, &kp, dt).unwrap();
            let dvp = DevTensor::from_f32(&gpu, &vp, dt).unwrap();
            let dq = DevTensor::from_f32(&gpu, &q_new, dt).unwrap();
            let table = gpu.upload(&layout.block_table).unwrap();
            let starts = gpu.upload(&layout.seq_start).unwrap();
            let past = gpu.upload(&layout.past).unwrap();
            let tiles = gpu.upload(&layout.tiles).unwrap();
            // SIMT where its shared memory fits (192 KB at head_dim 512);
            // tensor cores (and their cp.async double-buffered variant, up to
            // head_dim 256, and on Hopper the wgmma kernel at 64 and 128):
            // one block per (tile, head), the key range split in 3 (merged by
            // attention_merge), and the launcher's choice.
            let mut kernels = Vec::new();
            if gpu.attention_runs(AttnKernel::Simt, dt, hd) {
                kernels.push((AttnKernel::Simt, 0));
            }
            for k in [
                AttnKernel::TensorCore,
                AttnKernel::Pipelined,
                AttnKernel::Warpgroup,
            ] {
                if gpu.attention_runs(k, dt, hd) {
                    kernels.extend([1, 3, 0].map(|s| (k, s)));
                }
            }
            for (kernel, splits) in kernels {
                let mut out = DevTensor::poisoned(&gpu, dt, n * qd).unwrap();
                gpu.paged_attention(
                    kernel,
                    &dq.all(),
                    &dkp.all(),
                    &dvp.all(),
                    &table.as_view(),
                    &starts.as_view(),
                    &past.as_view(),
                    &tiles.as_view(),
                    layout.max_blocks,
                    &mut out.all_mut(),
                    shape,
                    splits,
                )
                .unwrap();
                // SIMT: f32 online softmax vs the f64 reference; outputs are
                // convex combinations of O(1) values, so 2e-6 absolute covers
                // the f32 rounding of scores, exps and sums; typed outputs add
                // one ulp. Tensor cores: Q (scores ~1/3 here) and P are
                // rounded to the cache dtype for the products, 2⁻⁹ relative
                // in bf16 (2⁻¹² in f16) each, so the output, a weighted mean
                // of |v| ≤ 1, moves by at most ~2·2⁻⁹ ≈ 4e-3 (5e-4); bounds at
                // 2× that. A dropped or doubled key tile moves it by ≥ 1e-2.
                // Splits merge f32 partials: within the same bounds.
                let abs = match (kernel, dt) {
                    (AttnKernel::Simt, _) => 2e-6,
                    (_, DType::BF16) => 8e-3,
                    _ => 1e-3,
                };
                assert_close(
                    &format!(
                        "attention {kernel:?} splits {splits} h{heads}/{kv_heads} hd{hd} window {window:?} {seqs:?} {dt:?}"
                    ),
                    &out.to_f32_vec(&gpu).unwrap(),
                    &want,
                    abs,
                    2e-6,
                    dt,
                );
            }
        }
    }
}

#[test]
fn act_mul_matches_the_cpu_for_silu_and_gelu_tanh() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(5);
    // 512 wide takes the 16-byte path in every dtype, 300 only in f32; the
    // view one element in (`skip`) is misaligned, so one element per thread.
    for act in [Act::Silu, Act::GeluTanh] {
        for (n, inter, skip) in [(33, 300, 0), (17, 512, 0), (9, 512, 1)] {
            for dt in DTYPES {
                // The input in the kernel's dtype (the gate/up GEMM's output).
                let gate_up = rounded(dt, &rng.vec(skip + n * 2 * inter, 8.0));
                let mut want = Vec::with_capacity(n * inter);
                for row in gate_up[skip..].chunks(2 * inter) {
                    let (g, u) = row.split_at(inter);
                    let mut g = g.to_vec();
                    act_mul_inplace(act, &mut g, u);
                    want.extend(g);
                }
                let dg = DevTensor::from_f32(&gpu, &gate_up, dt).unwrap();
                let mut out = DevTensor::poisoned(&gpu, dt, skip + n * inter).unwrap();
                gpu.act_mul(
                    act,
                    &dg.view(skip, skip + n * 2 * inter).unwrap(),
                    &mut out.view_mut(skip, skip + n * inter).unwrap(),
                    inter,
                )
                .unwrap();
                // expf / tanhf vs the CPU's own: a few f32 ulp.
                assert_close(
                    &format!("act_mul {act:?} {dt:?} {n}×{inter} from {skip}"),
                    &out.to_f32_vec(&gpu).unwrap()[skip..],
                    &want,
                    1e-6,
                    2e-6,
                    dt,
                );
            }
        }
    }
}

/// Gemma's per-layer input gate against `cpu::embed::per_layer_inputs`'
/// arithmetic and `gelu_tanh`: layer 2 of a 3-layer table.
#[test]
fn ple_gate_mul_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(11);
    let (n, dim, layers, vocab, layer, eps) = (19, 40, 3, 50, 2, 1e-6);
    let width = layers * dim;
    let desc = PerLayerEmbed {
        dim,
        vocab,
        embed_scale: (dim as f32).sqrt(),
        proj_scale: 0.125,
        combine_scale: std::f32::consts::FRAC_1_SQRT_2,
    };
    let (gate, e_proj) = (rng.vec(n * dim, 3.0), rng.vec(n * dim, 4.0));
    let (table, norm) = (rng.vec(vocab * width, 1.0), rng.vec(dim, 1.5));
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    for dt in DTYPES {
        let tab = rounded(dt, &table);
        let mut want = Vec::with_capacity(n * dim);
        for r in 0..n {
            let mut p: Vec<f32> = e_proj[r * dim..(r + 1) * dim]
                .iter()
                .map(|v| v * desc.proj_scale)
                .collect();
            ops::rms_norm_row(&mut p, &norm, eps);
            let row = &tab[tokens[r] as usize * width + layer * dim..][..dim];
            for (i, v) in p.iter_mut().enumerate() {
                let pl = (*v + row[i] * desc.embed_scale) * desc.combine_scale;
                *v = gelu_tanh(gate[r * dim + i]) * pl;
            }
            want.extend(p);
        }
        let ple = DevicePle {
            desc: desc.clone(),
            table: DevTensor::from_f32(&gpu, &table, dt).unwrap(),
            proj: DevTensor::zeros(&gpu, dt, width).unwrap(),
            norm: gpu.upload(&norm).unwrap(),
            embed_scale: desc.embed_scale,
        };
        let (dg, de) = (gpu.upload(&gate).unwrap(), gpu.upload(&e_proj).unwrap());
        let dtok = gpu.upload(&tokens).unwrap();
        let mut out = DevTensor::poisoned(&gpu, dt, n * dim).unwrap();
        gpu.ple_gate_mul(
            &dg.as_view(),
            &de.as_view(),
            &dtok.as_view(),
            &ple,
            layer,
            &mut out.all_mut(),
            eps,
        )
        .unwrap();
        assert_close(
            &format!("ple_gate_mul {dt:?}"),
            &out.to_f32_vec(&gpu).unwrap(),
            &want,
            2e-6,
            4e-6,
            dt,
        );
    }
}

#[test]
fn gate_sigmoid_mul_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(9);
    let (n, qd) = (17, 300);
    let (attn, gate) = (rng.vec(n * qd, 3.0), rng.vec(n * qd, 4.0));
    for dt in DTYPES {
        // Qwen 3.5's gated attention output: attn (in the cache dtype) · sigmoid(gate).
        let a = rounded(dt, &attn);
        let want: Vec<f32> = a
            .iter()
            .zip(&gate)
            .map(|(&x, &g)| x * (1.0 / (1.0 + (-g).exp())))
            .collect();
        let mut da = DevTensor::from_f32(&gpu, &attn, dt).unwrap();
        let dg = gpu.upload(&gate).unwrap();
        gpu.gate_sigmoid_mul(&mut da.all_mut(), &dg.as_view(), qd)
            .unwrap();
        // expf against the CPU's exp: a few f32 ulp, then the dtype's rounding.
        let got = da.to_f32_vec(&gpu).unwrap();
        assert_close(
            &format!("gate_sigmoid_mul {dt:?}"),
            &got,
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
        // The same product written in the operands' dtype: the f32 result
        // rounded once (the tolerance adds one ulp of `dt`).
        let mut typed = DevTensor::poisoned(&gpu, dt, rows * ldo).unwrap();
        gpu.matmul_wt_to(&dx.all(), &dw.all(), &mut typed.all_mut(), rows, n, k, ldo)
            .unwrap();
        let got = typed.to_f32_vec(&gpu).unwrap();
        let got: Vec<f32> = (0..rows)
            .flat_map(|r| got[r * ldo..r * ldo + n].to_vec())
            .collect();
        assert_close(
            &format!("gemm {dt:?} → {dt:?}"),
            &got,
            &want,
            2e-5,
            1e-5,
            dt,
        );
    }
}

/// Hopper's warpgroup products read the 128-byte-swizzled layouts as the
/// CPU emulator reads them (kernels/wgmma_probe.cu against the host's f64
/// products, `Gpu::wgmma_check`): the check that any wgmma kernel relies on.
/// On a Hopper chip the sm_90a cubin must have been loaded; elsewhere there
/// is no wgmma and the test says so.
#[test]
fn wgmma_products_read_the_layouts_the_emulator_reads() {
    let Some(gpu) = gpu() else { return };
    if gpu.arch() != (9, 0) {
        eprintln!(
            "skipping: wgmma is Hopper's (sm_90a); this is {}",
            gpu.describe()
        );
        return;
    }
    let cases = gpu
        .wgmma_check()
        .unwrap()
        .unwrap_or_else(|| panic!("a Hopper chip without the sm_90a cubin: {}", gpu.describe()));
    assert_eq!(cases.len(), 4);
    for c in &cases {
        eprintln!(
            "wgmma {} hd {}: max |Δ| S {:.2e}, O {:.2e} (tolerance {:.0e})",
            c.dtype.name(),
            c.head_dim,
            c.s_err,
            c.o_err,
            padv::backend::cuda::wgmma::WGMMA_TOL
        );
    }
    assert!(cases.iter().all(|c| c.passed()), "{cases:?}");
}
