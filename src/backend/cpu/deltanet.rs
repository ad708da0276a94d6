//! The gated-DeltaNet mixer of one layer over a packed batch (Qwen 3.5's
//! `linear_attn`), from its description ([`DeltaNetDesc`]), in
//! transformers' order of operations:
//!
//! 1. input norm, then `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`
//!    over bounded chunks of rows (big GEMMs across all sequences);
//! 2. per sequence, the causal depthwise convolution over the `[q | k | v]`
//!    channels (zero left padding, or the cached tail of the prefix) and SiLU;
//! 3. q and k L2-normalised per key head (`x · rsqrt(Σx² + 1e-6)`), q scaled
//!    by `1/√k_head_dim`; `β = sigmoid(b)`, `g = −exp(A_log) ·
//!    softplus(a + dt_bias)`;
//! 4. per (sequence, value head), the chunked delta rule
//!    ([`super::delta_rule`]) from the zero state or the cached prefix's
//!    state, value head `j` reading key head `j / (v_heads / k_heads)`;
//! 5. per value head, RMSNorm with the plain weight, times `silu(z)`.
//!
//! The output is `[rows, value_dim]`, before `out_proj`. With a KV cache a
//! sequence's rows are its new tokens: the state and the convolution tail of
//! its prefix come from the snapshot of its last cached block, and the
//! snapshot after every block this call fills is written into that block
//! ([`crate::kv::ModelKv::state`]).

use rayon::prelude::*;

use super::delta_rule::{HeadInputs, chunked};
use super::forward::KvBatch;
use super::gemm_bf16::Gemm;
use super::mixer::{Rows, input_chunks};
use super::norm::rms_norm_row;
use crate::backend::profile::{self, Part};
use crate::model::config::DeltaNetDesc;
use crate::model::layout::DeltaNetWeights;

/// ε of the L2 norm of q and k (fixed, not `rms_norm_eps`).
const L2_EPS: f32 = 1e-6;

/// The weights of one DeltaNet layer as the forward applies them.
pub struct DeltaNetLayer<'a> {
    pub li: usize,
    pub desc: &'a DeltaNetDesc,
    pub w: &'a DeltaNetWeights<'a>,
    /// The block's input norm (weight as applied), when it has one.
    pub in_norm: Option<&'a [f32]>,
    pub eps: f32,
    /// The arithmetic of the input projections.
    pub gemm: Gemm,
}

/// Reused buffers.
#[derive(Default)]
pub struct DeltaNetScratch {
    normed: Vec<f32>,
    /// `[rows, conv_dim]` before the convolution.
    qkv: Vec<f32>,
    /// `[rows, conv_dim]` after it (and after the q/k norms).
    mixed: Vec<f32>,
    z: Vec<f32>,
    /// `[rows, v_heads]`: b, then β.
    b: Vec<f32>,
    /// `[rows, v_heads]`: a, then g.
    a: Vec<f32>,
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `softplus` as torch computes it (threshold 20).
#[inline]
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// Causal depthwise convolution + SiLU of one sequence: `x` `[len, cd]`,
/// `tail` the `kernel − 1` rows before it, `w_t` the weight transposed to
/// `[kernel, cd]`; `out` `[len, cd]`.
fn causal_conv(x: &[f32], tail: &[f32], w_t: &[f32], kernel: usize, cd: usize, out: &mut [f32]) {
    const ROWS: usize = 16;
    let pad = kernel - 1;
    out.par_chunks_mut(cd * ROWS)
        .enumerate()
        .for_each(|(blk, rows)| {
            for (ri, o) in rows.chunks_mut(cd).enumerate() {
                let i = blk * ROWS + ri;
                o.fill(0.0);
                for (j, wj) in w_t.chunks(cd).enumerate() {
                    // Input row i + j − pad of the sequence (negative: the tail).
                    let src = match (i + j).checked_sub(pad) {
                        Some(r) => &x[r * cd..(r + 1) * cd],
                        None => &tail[(i + j) * cd..(i + j + 1) * cd],
                    };
                    for ((o, &w), &v) in o.iter_mut().zip(wj).zip(src) {
                        *o += w * v;
                    }
                }
                o.iter_mut().for_each(|v| *v = silu(*v));
            }
        });
}

/// The `kernel − 1` input rows before row `end` of a sequence whose rows are
/// `x` (`[len, cd]`) preceded by `tail`.
fn conv_tail_at(x: &[f32], tail: &[f32], end: usize, pad: usize, cd: usize, out: &mut [f32]) {
    for (m, o) in out.chunks_mut(cd).enumerate().take(pad) {
        // Extended index end + m (the extended sequence is tail, then x).
        let e = end + m;
        o.copy_from_slice(match e.checked_sub(pad) {
            Some(r) => &x[r * cd..(r + 1) * cd],
            None => &tail[e * cd..(e + 1) * cd],
        });
    }
}

/// The output of one (sequence, value head) task and the states after each
/// block it fills.
struct HeadOut {
    out: Vec<f32>,
    snaps: Vec<f32>,
}

/// DeltaNet mixer of one layer for every row of `x` (`[rows, hidden]`) into
/// `out` (`[rows, value_dim]`).
pub fn deltanet_block(
    l: &DeltaNetLayer,
    x: &[f32],
    rows: &Rows,
    kv: &mut Option<KvBatch<'_>>,
    s: &mut DeltaNetScratch,
    out: &mut [f32],
) {
    let (d, w, li) = (l.desc, l.w, l.li);
    let h = w.in_qkv.cols();
    let t = x.len() / h;
    let (cd, vd, vh) = (d.conv_dim(), d.value_dim(), d.num_v_heads);
    let (dk, dv, kd) = (d.k_head_dim, d.v_head_dim, d.key_dim());
    let pad = d.conv_kernel - 1;
    let state_len = d.state_floats();

    // 1. Projections.
    for (buf, width) in [
        (&mut s.qkv, cd),
        (&mut s.z, vd),
        (&mut s.b, vh),
        (&mut s.a, vh),
    ] {
        buf.resize(t * width, 0.0);
    }
    let mut normed = std::mem::take(&mut s.normed);
    input_chunks(x, h, l.in_norm, l.eps, &mut normed, |r0, n, input| {
        l.gemm
            .matmul_wt(input, n, &w.in_qkv, &mut s.qkv[r0 * cd..], cd, false);
        l.gemm
            .matmul_wt(input, n, &w.in_z, &mut s.z[r0 * vd..], vd, false);
        l.gemm
            .matmul_wt(input, n, &w.in_b, &mut s.b[r0 * vh..], vh, false);
        l.gemm
            .matmul_wt(input, n, &w.in_a, &mut s.a[r0 * vh..], vh, false);
    });
    s.normed = normed;

    let delta_span = profile::span(Part::DeltaRule);
    // 2. Convolution + SiLU, per sequence from its prefix's tail.
    let conv = w.conv.data.to_f32_vec();
    let kernel = d.conv_kernel;
    let mut w_t = vec![0.0f32; kernel * cd];
    for c in 0..cd {
        for j in 0..kernel {
            w_t[j * cd + c] = conv[c * kernel + j];
        }
    }
    let prefix_snapshot = |si: usize| -> Option<&[f32]> {
        let k = kv.as_ref()?;
        let id = *k.seqs[si].past.last()?;
        Some(k.store.state(li, id))
    };
    s.mixed.resize(t * cd, 0.0);
    let tails: Vec<Vec<f32>> = (0..rows.seqs.len())
        .map(|si| {
            prefix_snapshot(si).map_or_else(|| vec![0.0; pad * cd], |s| s[state_len..].to_vec())
        })
        .collect();
    for (si, sq) in rows.seqs.iter().enumerate() {
        let span = sq.start * cd..(sq.start + sq.len) * cd;
        causal_conv(
            &s.qkv[span.clone()],
            &tails[si],
            &w_t,
            kernel,
            cd,
            &mut s.mixed[span],
        );
    }

    // 3. q/k L2 norms and q scale; gates.
    let q_scale = (dk as f64).powf(-0.5) as f32;
    s.mixed.par_chunks_mut(cd).for_each(|row| {
        for (i, head) in row[..2 * kd].chunks_mut(dk).enumerate() {
            let ss: f32 = head.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss + L2_EPS).sqrt();
            let f = if i < d.num_k_heads { q_scale } else { 1.0 };
            head.iter_mut().for_each(|v| *v = *v * inv * f);
        }
    });
    let a_log = w.a_log.data.to_f32_vec();
    let dt_bias = w.dt_bias.data.to_f32_vec();
    for (b, a) in s.b.chunks_mut(vh).zip(s.a.chunks_mut(vh)) {
        for j in 0..vh {
            b[j] = 1.0 / (1.0 + (-b[j]).exp());
            a[j] = -a_log[j].exp() * softplus(a[j] + dt_bias[j]);
        }
    }

    // 4. The delta rule per (sequence, value head).
    let bs = kv.as_ref().map_or(1, |k| k.store.block_size());
    let group = vh / d.num_k_heads;
    let tasks: Vec<(usize, usize)> = (0..rows.seqs.len())
        .flat_map(|si| (0..vh).map(move |j| (si, j)))
        .filter(|&(si, _)| rows.seqs[si].len > 0)
        .collect();
    let (mixed, gs, betas) = (&s.mixed, &s.a, &s.b);
    let results: Vec<HeadOut> = tasks
        .par_iter()
        .map(|&(si, j)| {
            let sq = rows.seqs[si];
            let (r0, len) = (sq.start, sq.len);
            let kh = j / group;
            let gather = |at: usize, width: usize| -> Vec<f32> {
                (r0..r0 + len)
                    .flat_map(|r| &mixed[r * cd + at..r * cd + at + width])
                    .copied()
                    .collect()
            };
            let (q, k) = (gather(kh * dk, dk), gather(kd + kh * dk, dk));
            let v = gather(2 * kd + j * dv, dv);
            let column =
                |m: &[f32]| -> Vec<f32> { (r0..r0 + len).map(|r| m[r * vh + j]).collect() };
            let (g, beta) = (column(gs), column(betas));
            let mut state = match prefix_snapshot(si) {
                Some(snap) => snap[j * dk * dv..(j + 1) * dk * dv].to_vec(),
                None => vec![0.0; dk * dv],
            };
            let fills = kv.as_ref().map_or(0, |k| k.seqs[si].fill.len());
            let cuts: Vec<usize> = (1..=fills).map(|b| b * bs).collect();
            let mut snaps = Vec::with_capacity(fills * dk * dv);
            let mut o = vec![0.0f32; len * dv];
            let inputs = HeadInputs {
                q: &q,
                k: &k,
                v: &v,
                g: &g,
                beta: &beta,
                dk,
                dv,
            };
            chunked(inputs, rows.past[si], &mut state, &mut o, &cuts, |_, st| {
                snaps.extend_from_slice(st)
            });
            HeadOut { out: o, snaps }
        })
        .collect();
    drop(delta_span);

    // 5. Scatter, gated norm, snapshots.
    let norm = w.norm.data.to_f32_vec();
    for (&(si, j), r) in tasks.iter().zip(&results) {
        let r0 = rows.seqs[si].start;
        for (i, o) in r.out.chunks(dv).enumerate() {
            let at = (r0 + i) * vd + j * dv;
            out[at..at + dv].copy_from_slice(o);
        }
    }
    out[..t * vd]
        .par_chunks_mut(vd)
        .zip(s.z.par_chunks(vd))
        .for_each(|(o, z)| {
            for (oh, zh) in o.chunks_mut(dv).zip(z.chunks(dv)) {
                rms_norm_row(oh, &norm, l.eps);
                for (v, &g) in oh.iter_mut().zip(zh) {
                    *v *= silu(g);
                }
            }
        });
    if let Some(kvb) = kv.as_mut() {
        for (&(si, j), r) in tasks.iter().zip(&results) {
            for (b, &id) in kvb.seqs[si].fill.iter().enumerate() {
                let snap = &r.snaps[b * dk * dv..(b + 1) * dk * dv];
                kvb.store.state_mut(li, id)[j * dk * dv..(j + 1) * dk * dv].copy_from_slice(snap);
            }
        }
        for (si, sq) in rows.seqs.iter().enumerate() {
            let xs = &s.qkv[sq.start * cd..(sq.start + sq.len) * cd];
            for (b, &id) in kvb.seqs[si].fill.iter().enumerate() {
                let dst = &mut kvb.store.state_mut(li, id)[state_len..];
                conv_tail_at(xs, &tails[si], (b + 1) * bs, pad, cd, dst);
            }
        }
    }
}
