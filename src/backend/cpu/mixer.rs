//! The attention mixer of one layer over a packed batch, from its
//! description ([`AttnDesc`]): input norm (when the block has one), q/k/v
//! projections (+ bias), q/k RMSNorm per head or over the whole projection,
//! the weightless v norm, RoPE, then causal attention per sequence over its
//! cached prefix and new tokens ([`super::attention`]), writing the new full
//! blocks' K/V into the cache. A layer that shares another layer's K/V
//! (Gemma) computes only q and reads the source layer's post-RoPE K/V, new
//! rows from [`SharedKv`] and cached rows from the source layer's blocks.
//! With an output gate (Qwen 3.5) `q_proj` gives per head `[query | gate]`
//! and the attention result is multiplied by `sigmoid(gate)`. The output is
//! the attention result before `o_proj`.
//!
//! [`input_chunks`] is the input side every mixer shares (the block's input
//! norm over bounded chunks of rows); the other mixer kind is
//! [`super::deltanet`].

use rayon::prelude::*;

use super::attention::{AttnShape, attention, attention_bf16};
use super::forward::{CHUNK, KvBatch, Packed};
use super::gemm_bf16::Gemm;
use super::norm::{rms_norm, rms_norm_row, rms_norm_row_unit};
use super::rope::{RopeTable, rope_row};
use crate::model::config::{AttnDesc, LayerDesc, QkNorm};
use crate::model::layout::AttnWeights;

/// Where the batch's rows sit: sequences, their cached prefix lengths and
/// every row's absolute position.
pub struct Rows<'a> {
    pub seqs: &'a [Packed],
    pub past: &'a [usize],
    pub pos: &'a [usize],
}

/// New rows' K/V of the layers later layers share, by source layer.
pub struct SharedKv(Vec<Option<(Vec<f32>, Vec<f32>)>>);

impl SharedKv {
    /// Room for every layer that some later layer reads from.
    pub fn new(layers: &[LayerDesc]) -> SharedKv {
        SharedKv(vec![None; layers.len()])
    }

    /// Whether a later layer reads layer `li`'s K/V.
    pub fn is_source(layers: &[LayerDesc], li: usize) -> bool {
        layers
            .iter()
            .any(|l| l.attn().and_then(|a| a.kv_from) == Some(li))
    }
}

/// Run `f(r0, n, input)` over chunks of at most [`CHUNK`] rows of `x`
/// (`[rows, h]`), `input` being the rows normed by `in_norm` (the block's
/// input norm, weight as applied) or the rows themselves.
pub fn input_chunks(
    x: &[f32],
    h: usize,
    in_norm: Option<&[f32]>,
    eps: f32,
    normed: &mut Vec<f32>,
    mut f: impl FnMut(usize, usize, &[f32]),
) {
    let t = x.len() / h;
    let c = CHUNK.min(t.max(1));
    for r0 in (0..t).step_by(c) {
        let r1 = (r0 + c).min(t);
        let n = r1 - r0;
        let input: &[f32] = match in_norm {
            Some(nw) => {
                normed.resize(c * h, 0.0);
                rms_norm(&x[r0 * h..r1 * h], nw, eps, &mut normed[..n * h]);
                &normed[..n * h]
            }
            None => &x[r0 * h..r1 * h],
        };
        f(r0, n, input);
    }
}

/// Reused buffers (`[rows, width]` each).
#[derive(Default)]
pub struct MixerScratch {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    k_all: Vec<f32>,
    v_all: Vec<f32>,
    /// `[rows, 2 · q_dim]` projection of a gated layer, `[rows, q_dim]` gate.
    q_gate: Vec<f32>,
    gate: Vec<f32>,
}

fn add_bias(buf: &mut [f32], bias: Option<&[f32]>, width: usize) {
    if let Some(b) = bias {
        for row in buf.chunks_mut(width) {
            for (x, b) in row.iter_mut().zip(b) {
                *x += b;
            }
        }
    }
}

fn qk_norm(buf: &mut [f32], kind: QkNorm, w: Option<&[f32]>, head_dim: usize, eps: f32) {
    let (Some(w), false) = (w, kind == QkNorm::None) else {
        return;
    };
    let width = match kind {
        QkNorm::PerHead => head_dim,
        _ => w.len(), // FullWidth: the whole projection
    };
    for part in buf.chunks_mut(width) {
        rms_norm_row(part, w, eps);
    }
}

/// The weights of one attention layer as the forward applies them.
pub struct AttnLayer<'a> {
    pub li: usize,
    pub desc: &'a AttnDesc,
    pub w: &'a AttnWeights<'a>,
    /// The block's input norm (weight as applied), when it has one.
    pub in_norm: Option<&'a [f32]>,
    /// q/k norm weights as applied.
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub rope: &'a RopeTable,
    pub eps: f32,
    /// A later layer reads this layer's K/V: keep the new rows in [`SharedKv`].
    pub keep: bool,
    /// The arithmetic of the q/k/v projections.
    pub gemm: Gemm,
}

/// Split a gated projection `[n, heads, 2·hd]` into queries and gates
/// (`[n, heads·hd]` each).
fn split_gate(qg: &[f32], hd: usize, q: &mut [f32], gate: &mut [f32]) {
    for ((pair, qh), gh) in qg
        .chunks(2 * hd)
        .zip(q.chunks_mut(hd))
        .zip(gate.chunks_mut(hd))
    {
        qh.copy_from_slice(&pair[..hd]);
        gh.copy_from_slice(&pair[hd..]);
    }
}

/// Attention of one layer for every row of `x` (`[rows, hidden]`) into `out`
/// (`[rows, q_dim]`).
pub fn attention_block(
    l: &AttnLayer,
    x: &[f32],
    rows: &Rows,
    kv: &mut Option<KvBatch<'_>>,
    shared: &mut SharedKv,
    s: &mut MixerScratch,
    out: &mut [f32],
) {
    let (li, a, w, eps, rope, keep) = (l.li, l.desc, l.w, l.eps, l.rope, l.keep);
    let h = w.q.cols();
    let t = x.len() / h;
    let (qd, kvd, hd) = (a.q_dim(), a.kv_dim(), a.head_dim);
    let own = a.kv_from.is_none();
    let widen = |t: &Option<crate::model::weights::Tensor>| t.map(|t| t.data.to_f32_vec());
    let (qb, kb, vb) = (widen(&w.q_bias), widen(&w.k_bias), widen(&w.v_bias));

    s.q.resize(t * qd, 0.0);
    if a.output_gate {
        s.gate.resize(t * qd, 0.0);
    }
    if own {
        s.k.resize(t * kvd, 0.0);
        s.v.resize(t * kvd, 0.0);
    }
    let mut normed = std::mem::take(&mut s.normed);
    input_chunks(x, h, l.in_norm, eps, &mut normed, |r0, n, input| {
        let r1 = r0 + n;
        let qs = &mut s.q[r0 * qd..r1 * qd];
        if a.output_gate {
            s.q_gate.resize(n * 2 * qd, 0.0);
            l.gemm
                .matmul_wt(input, n, &w.q, &mut s.q_gate, 2 * qd, false);
            add_bias(&mut s.q_gate, qb.as_deref(), 2 * qd);
            split_gate(&s.q_gate, hd, qs, &mut s.gate[r0 * qd..r1 * qd]);
        } else {
            l.gemm.matmul_wt(input, n, &w.q, qs, qd, false);
            add_bias(qs, qb.as_deref(), qd);
        }
        qk_norm(qs, a.qk_norm, l.q_norm, hd, eps);
        for (i, qr) in qs.chunks_mut(qd).enumerate() {
            rope_row(qr, rope, rows.pos[r0 + i]);
        }
        if let (true, Some(wk), Some(wv)) = (own, &w.k, &w.v) {
            let ks = &mut s.k[r0 * kvd..r1 * kvd];
            let vs = &mut s.v[r0 * kvd..r1 * kvd];
            l.gemm.matmul_wt(input, n, wk, ks, kvd, false);
            l.gemm.matmul_wt(input, n, wv, vs, kvd, false);
            add_bias(ks, kb.as_deref(), kvd);
            add_bias(vs, vb.as_deref(), kvd);
            qk_norm(ks, a.qk_norm, l.k_norm, hd, eps);
            if a.v_norm {
                vs.chunks_mut(hd)
                    .for_each(|head| rms_norm_row_unit(head, eps));
            }
            for (i, kr) in ks.chunks_mut(kvd).enumerate() {
                rope_row(kr, rope, rows.pos[r0 + i]);
            }
        }
    });
    s.normed = normed;

    // The K/V rows this layer attends over, and the layer whose cache blocks
    // hold their prefix.
    let kv_layer = a.kv_from.unwrap_or(li);
    let (k, v): (&[f32], &[f32]) = match a.kv_from {
        None => (&s.k[..t * kvd], &s.v[..t * kvd]),
        Some(src) => {
            let (k, v) = shared.0[src]
                .as_ref()
                .expect("the source layer runs first and keeps its K/V");
            (k, v)
        }
    };
    let shape = AttnShape::of(a);
    let bs = kv.as_ref().map_or(0, |kv| kv.store.block_size());
    // bf16 mode: both attention products on bf16 pairs too.
    let attend = match l.gemm {
        Gemm::F32 => attention,
        Gemm::Bf16 => attention_bf16,
    };
    for (si, sq) in rows.seqs.iter().enumerate() {
        let (r0, r1) = (sq.start, sq.start + sq.len);
        let p = rows.past[si];
        let o = &mut out[r0 * qd..r1 * qd];
        let q = &s.q[r0 * qd..r1 * qd];
        if sq.len > 0 && p == 0 {
            let (kr, vr) = (&k[r0 * kvd..r1 * kvd], &v[r0 * kvd..r1 * kvd]);
            attend(q, kr, kvd, vr, kvd, 0, sq.len, shape, o);
        } else if sq.len > 0 {
            let kvb = kv.as_ref().expect("a prefix implies a cache");
            let n = (p + sq.len) * kvd;
            s.k_all.resize(n, 0.0);
            s.v_all.resize(n, 0.0);
            let (kp, kn) = s.k_all.split_at_mut(p * kvd);
            let (vp, vn) = s.v_all.split_at_mut(p * kvd);
            kvb.store.gather(kv_layer, kvb.seqs[si].past, kp, vp);
            kn.copy_from_slice(&k[r0 * kvd..r1 * kvd]);
            vn.copy_from_slice(&v[r0 * kvd..r1 * kvd]);
            attend(
                q,
                &s.k_all[..n],
                kvd,
                &s.v_all[..n],
                kvd,
                p,
                sq.len,
                shape,
                o,
            );
        }
        if let (true, Some(kvb)) = (own, kv.as_mut()) {
            for (j, &id) in kvb.seqs[si].fill.iter().enumerate() {
                let span = (r0 + j * bs) * kvd..(r0 + (j + 1) * bs) * kvd;
                kvb.store.k_mut(li, id).copy_from_slice(&k[span.clone()]);
                kvb.store.v_mut(li, id).copy_from_slice(&v[span]);
            }
        }
    }
    if keep && own {
        shared.0[li] = Some((s.k[..t * kvd].to_vec(), s.v[..t * kvd].to_vec()));
    }
    if a.output_gate {
        gate_sigmoid(&mut out[..t * qd], &s.gate[..t * qd]);
    }
}

/// `o ← o · sigmoid(gate)`, elementwise.
fn gate_sigmoid(o: &mut [f32], gate: &[f32]) {
    o.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096))
        .for_each(|(o, g)| {
            for (o, g) in o.iter_mut().zip(g) {
                *o *= 1.0 / (1.0 + (-g).exp());
            }
        });
}
