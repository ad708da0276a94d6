//! Teacher-forced forward of one decoder over a packed batch of sequences,
//! returning the final-norm hidden state of *every* new position.
//!
//! Linear layers run over token chunks of all sequences at once (big GEMMs,
//! bounded scratch: `CHUNK × intermediate` floats), attention runs per
//! sequence. Residual adds are fused into the o/down projections (the GEMM
//! accumulates into the residual stream).
//!
//! With a KV cache ([`KvBatch`], layout in [`crate::kv`]) a sequence's rows are
//! only its *new* tokens, at positions `[past, past + len)`: per layer, the
//! keys/values of the cached prefix are gathered from its block table in
//! front of the new ones and attention runs with a `past` offset, and the new
//! full blocks' K/V are written into the blocks the cache allocated for them
//! (vLLM's `reshape_and_cache`). The cost is the new tokens' linear layers
//! plus their attention over the whole prefix.

use super::gemm::matmul_wt;
use super::ops::{self, AttnShape, RopeTable};
use crate::kv::{BlockId, ModelKv};
use crate::model::Model;
use crate::{Error, Result};

/// Tokens per chunk for the linear layers.
pub const CHUNK: usize = 1024;

/// One sequence inside a packed batch: rows `[start, start + len)`.
#[derive(Debug, Clone, Copy)]
pub struct Packed {
    pub start: usize,
    pub len: usize,
}

/// The cache side of one packed sequence.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqKv<'a> {
    /// Block table of the cached prefix: positions `[0, past)`, `past =
    /// past.len() · block_size`.
    pub past: &'a [BlockId],
    /// Blocks receiving this call's full blocks: `fill[j]` gets new rows
    /// `[j · block_size, (j + 1) · block_size)`.
    pub fill: &'a [BlockId],
}

/// A model's block store and the cache side of every sequence (same order
/// as the packed sequences).
pub struct KvBatch<'a> {
    pub store: &'a mut ModelKv,
    pub seqs: &'a [SeqKv<'a>],
}

/// Check every token id against the model's vocabulary.
pub fn check_tokens(model: &Model, tokens: &[u32]) -> Result<()> {
    let v = model.config.vocab_size;
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= v) {
        return Err(Error::Backend(format!(
            "token id {t} at position {i} is outside the model's vocabulary (size {v})"
        )));
    }
    Ok(())
}

/// Final-norm hidden states `[tokens.len(), hidden]` for every position.
pub fn forward_hidden(
    model: &Model,
    rope: &RopeTable,
    tokens: &[u32],
    seqs: &[Packed],
) -> Result<Vec<f32>> {
    forward_hidden_kv(model, rope, tokens, seqs, None)
}

/// [`forward_hidden`] continuing cached prefixes: `tokens` are the new tokens
/// of every sequence, and each sequence's prefix and the blocks to fill come
/// from `kv`. Returns the hidden states of the new positions only.
pub fn forward_hidden_kv(
    model: &Model,
    rope: &RopeTable,
    tokens: &[u32],
    seqs: &[Packed],
    mut kv: Option<KvBatch<'_>>,
) -> Result<Vec<f32>> {
    let cfg = &model.config;
    check_tokens(model, tokens)?;
    let bs = kv.as_ref().map_or(0, |kv| kv.store.block_size());
    let past: Vec<usize> = match &kv {
        Some(kv) => {
            if kv.seqs.len() != seqs.len() {
                return Err(Error::Backend(format!(
                    "{} cache entries for {} sequences",
                    kv.seqs.len(),
                    seqs.len()
                )));
            }
            if kv.store.kv_dim() != cfg.num_kv_heads * cfg.head_dim {
                return Err(Error::Backend(
                    "the KV store belongs to a model of another shape".into(),
                ));
            }
            for (s, k) in seqs.iter().zip(kv.seqs) {
                if k.fill.len() * bs > s.len {
                    return Err(Error::Backend(format!(
                        "{} blocks to fill from {} new tokens",
                        k.fill.len(),
                        s.len
                    )));
                }
            }
            kv.seqs.iter().map(|k| k.past.len() * bs).collect()
        }
        None => vec![0; seqs.len()],
    };
    let longest = seqs
        .iter()
        .zip(&past)
        .map(|(s, p)| s.len + p)
        .max()
        .unwrap_or(0);
    if longest > rope.max_pos() {
        return Err(Error::Backend(format!(
            "sequence of {longest} tokens is longer than the RoPE table ({})",
            rope.max_pos()
        )));
    }
    let w = model.bind();
    let t = tokens.len();
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let inter = cfg.intermediate_size;

    // Embedding gather.
    let mut x = vec![0.0f32; t * h];
    for (row, &tok) in x.chunks_mut(h).zip(tokens) {
        w.embed.data.widen_into(tok as usize * h, row);
    }
    let mut pos = vec![0usize; t];
    for (s, &p) in seqs.iter().zip(&past) {
        for i in 0..s.len {
            pos[s.start + i] = p + i;
        }
    }

    let mut q = vec![0.0f32; t * qd];
    let mut k = vec![0.0f32; t * kvd];
    let mut v = vec![0.0f32; t * kvd];
    let mut attn = vec![0.0f32; t * qd];
    let c = CHUNK.min(t.max(1));
    let mut normed = vec![0.0f32; c * h];
    let mut gate = vec![0.0f32; c * inter];
    let mut up = vec![0.0f32; c * inter];
    // Prefix + new keys/values of one sequence (only when it has a prefix).
    let (mut k_all, mut v_all) = (Vec::new(), Vec::new());

    for (li, lw) in w.layers.iter().enumerate() {
        let in_norm = lw.input_norm.data.to_f32_vec();
        let post_norm = lw.post_norm.data.to_f32_vec();
        let biases = [&lw.q_bias, &lw.k_bias, &lw.v_bias].map(|b| b.map(|b| b.data.to_f32_vec()));
        let q_norm = lw.q_norm.map(|n| n.data.to_f32_vec());
        let k_norm = lw.k_norm.map(|n| n.data.to_f32_vec());

        for r0 in (0..t).step_by(c) {
            let r1 = (r0 + c).min(t);
            let n = r1 - r0;
            let nx = &mut normed[..n * h];
            ops::rms_norm(&x[r0 * h..r1 * h], &in_norm, cfg.rms_norm_eps, nx);
            matmul_wt(nx, n, &lw.q, &mut q[r0 * qd..r1 * qd], qd, false);
            matmul_wt(nx, n, &lw.k, &mut k[r0 * kvd..r1 * kvd], kvd, false);
            matmul_wt(nx, n, &lw.v, &mut v[r0 * kvd..r1 * kvd], kvd, false);
            let qs = &mut q[r0 * qd..r1 * qd];
            let ks = &mut k[r0 * kvd..r1 * kvd];
            let vs = &mut v[r0 * kvd..r1 * kvd];
            for (buf, bias, width) in [
                (&mut *qs, &biases[0], qd),
                (&mut *ks, &biases[1], kvd),
                (&mut *vs, &biases[2], kvd),
            ] {
                if let Some(b) = bias {
                    for row in buf.chunks_mut(width) {
                        for (x, b) in row.iter_mut().zip(b) {
                            *x += b;
                        }
                    }
                }
            }
            if let (Some(qn), Some(kn)) = (&q_norm, &k_norm) {
                for head in qs.chunks_mut(hd) {
                    ops::rms_norm_row(head, qn, cfg.rms_norm_eps);
                }
                for head in ks.chunks_mut(hd) {
                    ops::rms_norm_row(head, kn, cfg.rms_norm_eps);
                }
            }
            for (i, (qr, kr)) in qs.chunks_mut(qd).zip(ks.chunks_mut(kvd)).enumerate() {
                ops::rope_row(qr, rope, pos[r0 + i]);
                ops::rope_row(kr, rope, pos[r0 + i]);
            }
        }

        let shape = AttnShape {
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            window: cfg.sliding_window[li],
        };
        for (si, s) in seqs.iter().enumerate() {
            let (a, b) = (s.start, s.start + s.len);
            let p = past[si];
            if s.len > 0 && p == 0 {
                ops::attention(
                    &q[a * qd..b * qd],
                    &k[a * kvd..b * kvd],
                    kvd,
                    &v[a * kvd..b * kvd],
                    kvd,
                    0,
                    s.len,
                    shape,
                    &mut attn[a * qd..b * qd],
                );
            } else if s.len > 0 {
                let kv = kv.as_ref().expect("a prefix implies a cache");
                let n = (p + s.len) * kvd;
                k_all.resize(n, 0.0);
                v_all.resize(n, 0.0);
                let (kp, kn) = k_all.split_at_mut(p * kvd);
                let (vp, vn) = v_all.split_at_mut(p * kvd);
                kv.store.gather(li, kv.seqs[si].past, kp, vp);
                kn.copy_from_slice(&k[a * kvd..b * kvd]);
                vn.copy_from_slice(&v[a * kvd..b * kvd]);
                ops::attention(
                    &q[a * qd..b * qd],
                    &k_all,
                    kvd,
                    &v_all,
                    kvd,
                    p,
                    s.len,
                    shape,
                    &mut attn[a * qd..b * qd],
                );
            }
            if let Some(kv) = kv.as_mut() {
                for (j, &id) in kv.seqs[si].fill.iter().enumerate() {
                    let rows = (a + j * bs) * kvd..(a + (j + 1) * bs) * kvd;
                    kv.store.k_mut(li, id).copy_from_slice(&k[rows.clone()]);
                    kv.store.v_mut(li, id).copy_from_slice(&v[rows]);
                }
            }
        }

        for r0 in (0..t).step_by(c) {
            let r1 = (r0 + c).min(t);
            let n = r1 - r0;
            let xs = &mut x[r0 * h..r1 * h];
            matmul_wt(&attn[r0 * qd..r1 * qd], n, &lw.o, xs, h, true);
            let nx = &mut normed[..n * h];
            ops::rms_norm(xs, &post_norm, cfg.rms_norm_eps, nx);
            let g = &mut gate[..n * inter];
            let u = &mut up[..n * inter];
            matmul_wt(nx, n, &lw.gate, g, inter, false);
            matmul_wt(nx, n, &lw.up, u, inter, false);
            ops::silu_mul_inplace(g, u);
            matmul_wt(g, n, &lw.down, xs, h, true);
        }
    }
    let final_norm = w.final_norm.data.to_f32_vec();
    ops::rms_norm_inplace(&mut x, &final_norm, cfg.rms_norm_eps);
    Ok(x)
}
