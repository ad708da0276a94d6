//! Teacher-forced forward of one decoder over a packed batch of sequences,
//! returning the final-norm hidden state of *every* new position. The layer
//! loop reads the model description ([`crate::model::Config`]): each layer's
//! token mixer (softmax attention, [`super::mixer`], or gated-DeltaNet linear
//! attention, [`super::deltanet`]) followed by its output projection, its MLP
//! ([`super::mlp`]), its norm slots (pre-norm, post-norm, sandwich, with
//! plain or zero-centred weights; [`super::norm`]), and the per-layer extras
//! (Gemma's per-layer inputs from [`super::embed`], a layer scalar).
//!
//! Linear layers run over token chunks of all sequences at once (big GEMMs,
//! bounded scratch: `CHUNK × intermediate` floats), attention runs per
//! sequence. In pre-norm blocks the residual adds are fused into the o/down
//! projections (the GEMM accumulates into the residual stream); blocks with
//! output norms compute the projection, norm it and add.
//!
//! With a KV cache ([`KvBatch`], layout in [`crate::kv`]) a sequence's rows are
//! only its *new* tokens, at positions `[past, past + len)`: per layer, the
//! keys/values of the cached prefix are gathered from its block table in
//! front of the new ones and attention runs with a `past` offset, and the new
//! full blocks' K/V are written into the blocks the cache allocated for them
//! (vLLM's `reshape_and_cache`). DeltaNet layers start instead from the
//! recurrent state snapshot of the prefix's last block and write a snapshot
//! into every block they fill. The cost is the new tokens' linear layers
//! plus their attention over the whole prefix.

use super::deltanet::{DeltaNetLayer, DeltaNetScratch, deltanet_block};
use super::embed::{embed, per_layer_inputs};
use super::gemm_bf16::Gemm;
use super::mixer::{AttnLayer, MixerScratch, Rows, SharedKv, attention_block};
use super::mlp::{MlpScratch, act_mul_inplace, mlp};
use super::norm::{add_normed, norm_weight, rms_norm, rms_norm_inplace};
use super::rope::Ropes;
use crate::kv::{BlockId, ModelKv};
use crate::model::Model;
use crate::model::config::{Config, LayerDesc, Mixer};
use crate::model::layout::{LayerWeights, MixerParts};
use crate::model::weights::Tensor;
use crate::{Error, Result};

/// Tokens per chunk for the linear layers.
pub const CHUNK: usize = 1024;

pub use crate::backend::plan::Packed;

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

/// Final-norm hidden states `[tokens.len(), hidden]` for every position,
/// the weight GEMMs in `gemm`'s arithmetic.
pub fn forward_hidden(
    gemm: Gemm,
    model: &Model,
    ropes: &Ropes,
    tokens: &[u32],
    seqs: &[Packed],
) -> Result<Vec<f32>> {
    forward_hidden_kv(gemm, model, ropes, tokens, seqs, None)
}

/// Check the cache side against the batch and return each sequence's past.
fn past_lengths(cfg: &Config, seqs: &[Packed], kv: &Option<KvBatch<'_>>) -> Result<Vec<usize>> {
    let Some(kv) = kv else {
        return Ok(vec![0; seqs.len()]);
    };
    let bs = kv.store.block_size();
    if kv.seqs.len() != seqs.len() {
        return Err(Error::Backend(format!(
            "{} cache entries for {} sequences",
            kv.seqs.len(),
            seqs.len()
        )));
    }
    if kv.store.kv_dims() != ModelKv::layer_dims(cfg)
        || kv.store.state_dims() != ModelKv::layer_state_dims(cfg)
    {
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
    Ok(kv.seqs.iter().map(|k| k.past.len() * bs).collect())
}

/// [`forward_hidden`] continuing cached prefixes: `tokens` are the new tokens
/// of every sequence, and each sequence's prefix and the blocks to fill come
/// from `kv`. Returns the hidden states of the new positions only.
pub fn forward_hidden_kv(
    gemm: Gemm,
    model: &Model,
    ropes: &Ropes,
    tokens: &[u32],
    seqs: &[Packed],
    kv: Option<KvBatch<'_>>,
) -> Result<Vec<f32>> {
    forward_watched(gemm, model, ropes, tokens, seqs, kv, &mut |_, _| {})
}

/// A point of the forward pass whose output [`first_nonfinite`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The token embedding (with its scale).
    Embedding,
    /// Decoder layer `i` (0-based), its residual output.
    Layer(usize),
    /// The final norm.
    FinalNorm,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Embedding => f.write_str("the token embedding"),
            Stage::Layer(i) => write!(f, "decoder layer {i}"),
            Stage::FinalNorm => f.write_str("the final norm"),
        }
    }
}

/// The first stage whose hidden state is not finite when `tokens` run as
/// one sequence; `None` when every hidden state is (then the LM head made
/// the non-finite values). A diagnostic, run only after a log-prob came out
/// non-finite: a second forward of that sequence on the CPU, with a finite
/// scan of the hidden state after each stage (in f32: bf16 compute keeps
/// f32's range, so it finds the same stage).
pub fn first_nonfinite(model: &Model, tokens: &[u32]) -> Result<Option<Stage>> {
    let ropes = Ropes::new(&model.config, tokens.len().max(1));
    let seqs = [Packed {
        start: 0,
        len: tokens.len(),
    }];
    let mut first = None;
    forward_watched(
        Gemm::F32,
        model,
        &ropes,
        tokens,
        &seqs,
        None,
        &mut |stage, x| {
            if first.is_none() && x.iter().any(|v| !v.is_finite()) {
                first = Some(stage);
            }
        },
    )?;
    Ok(first)
}

/// The forward pass, calling `watch` with the hidden state after the
/// embedding, after each layer and after the final norm.
fn forward_watched(
    gemm: Gemm,
    model: &Model,
    ropes: &Ropes,
    tokens: &[u32],
    seqs: &[Packed],
    mut kv: Option<KvBatch<'_>>,
    watch: &mut dyn FnMut(Stage, &[f32]),
) -> Result<Vec<f32>> {
    let cfg = &model.config;
    crate::backend::plan::check_vocab(cfg, tokens)?;
    let past = past_lengths(cfg, seqs, &kv)?;
    let longest = seqs
        .iter()
        .zip(&past)
        .map(|(s, p)| s.len + p)
        .max()
        .unwrap_or(0);
    if longest > ropes.max_pos() {
        return Err(Error::Backend(format!(
            "sequence of {longest} tokens is longer than the RoPE table ({})",
            ropes.max_pos()
        )));
    }
    let w = model.bind();
    let t = tokens.len();
    let h = cfg.hidden_size;
    let eps = cfg.rms_norm_eps;

    let mut x = embed(cfg, &w, tokens);
    watch(Stage::Embedding, &x);
    let ple = per_layer_inputs(gemm, cfg, &w, tokens, &x);
    let mut pos = vec![0usize; t];
    for (s, &p) in seqs.iter().zip(&past) {
        for i in 0..s.len {
            pos[s.start + i] = p + i;
        }
    }
    let rows = Rows {
        seqs,
        past: &past,
        pos: &pos,
    };
    let mut shared = SharedKv::new(&cfg.layers);
    let c = CHUNK.min(t.max(1));
    let mut scratch = MixerScratch::default();
    let mut dn_scratch = DeltaNetScratch::default();
    let max_out = cfg
        .layers
        .iter()
        .map(LayerDesc::mixer_out_dim)
        .max()
        .unwrap_or(0);
    let max_inter = cfg
        .layers
        .iter()
        .map(|l| l.mlp.intermediate)
        .max()
        .unwrap_or(0);
    let mut attn = vec![0.0f32; t * max_out];
    let mut normed = vec![0.0f32; c * h];
    let mut delta = vec![0.0f32; c * h];
    let mut mlp_scratch = MlpScratch::new(c, max_inter);

    for (li, (ld, lw)) in cfg.layers.iter().zip(&w.layers).enumerate() {
        let qd = ld.mixer_out_dim();
        let attn = &mut attn[..t * qd];
        let norms = |n: &Option<Tensor>| n.as_ref().map(|n| norm_weight(cfg.norm, n));
        let in_norm = norms(&lw.attn_in_norm);
        match (&ld.mixer, &lw.mixer) {
            (Mixer::Attention(desc), MixerParts::Attention(aw)) => {
                let (q_norm, k_norm) = (norms(&aw.q_norm), norms(&aw.k_norm));
                let layer = AttnLayer {
                    li,
                    desc,
                    w: aw,
                    in_norm: in_norm.as_deref(),
                    q_norm: q_norm.as_deref(),
                    k_norm: k_norm.as_deref(),
                    rope: ropes.layer(li).expect("attention layers have a RoPE table"),
                    eps,
                    keep: SharedKv::is_source(&cfg.layers, li),
                    gemm,
                };
                attention_block(&layer, &x, &rows, &mut kv, &mut shared, &mut scratch, attn);
            }
            (Mixer::GatedDeltaNet(desc), MixerParts::DeltaNet(dw)) => {
                let layer = DeltaNetLayer {
                    li,
                    desc,
                    w: dw,
                    in_norm: in_norm.as_deref(),
                    eps,
                    gemm,
                };
                deltanet_block(&layer, &x, &rows, &mut kv, &mut dn_scratch, attn);
            }
            _ => unreachable!("the tensor table follows the description"),
        }
        let (attn_out, mlp_in, mlp_out) = (
            norms(&lw.attn_out_norm),
            norms(&lw.mlp_in_norm),
            norms(&lw.mlp_out_norm),
        );
        let o_proj = lw.mixer.out();
        for r0 in (0..t).step_by(c) {
            let r1 = (r0 + c).min(t);
            let n = r1 - r0;
            let xs = &mut x[r0 * h..r1 * h];
            // x += [norm](o(attn))
            let a = &attn[r0 * qd..r1 * qd];
            match &attn_out {
                None => gemm.matmul_wt(a, n, o_proj, xs, h, true),
                Some(nw) => {
                    let d = &mut delta[..n * h];
                    gemm.matmul_wt(a, n, o_proj, d, h, false);
                    add_normed(xs, d, nw, eps);
                }
            }
            // x += [norm](mlp([norm](x)))
            let input: &[f32] = match &mlp_in {
                Some(nw) => {
                    rms_norm(xs, nw, eps, &mut normed[..n * h]);
                    &normed[..n * h]
                }
                None => {
                    normed[..n * h].copy_from_slice(xs);
                    &normed[..n * h]
                }
            };
            match &mlp_out {
                None => mlp(gemm, &ld.mlp, lw, input, n, xs, true, &mut mlp_scratch),
                Some(nw) => {
                    let d = &mut delta[..n * h];
                    mlp(gemm, &ld.mlp, lw, input, n, d, false, &mut mlp_scratch);
                    add_normed(xs, d, nw, eps);
                }
            }
            if let (Some(p), true) = (&ple, ld.per_layer_input) {
                per_layer_input(gemm, cfg, li, lw, p, r0, xs, &mut delta[..n * h]);
            }
        }
        if let Some(s) = &lw.layer_scalar {
            let s = s.data.to_f32_vec()[0];
            x.iter_mut().for_each(|v| *v *= s);
        }
        watch(Stage::Layer(li), &x);
    }
    let final_norm = norm_weight(cfg.norm, &w.final_norm);
    rms_norm_inplace(&mut x, &final_norm, eps);
    watch(Stage::FinalNorm, &x);
    Ok(x)
}

/// `x += norm(proj(act(gate(x)) ⊙ P[l]))` for rows `[r0, r0 + n)`.
#[allow(clippy::too_many_arguments)]
fn per_layer_input(
    gemm: Gemm,
    cfg: &Config,
    li: usize,
    lw: &LayerWeights,
    ple: &[f32],
    r0: usize,
    xs: &mut [f32],
    delta: &mut [f32],
) {
    let (Some(gate), Some(proj), Some(norm), Some(p)) = (
        &lw.ple_gate,
        &lw.ple_proj,
        &lw.ple_norm,
        cfg.embed.per_layer.as_ref(),
    ) else {
        return;
    };
    let h = cfg.hidden_size;
    let n = xs.len() / h;
    let width = cfg.num_layers * p.dim;
    let mut g = vec![0.0f32; n * p.dim];
    gemm.matmul_wt(xs, n, gate, &mut g, p.dim, false);
    let mut pl = vec![0.0f32; n * p.dim];
    for (i, row) in pl.chunks_mut(p.dim).enumerate() {
        let at = (r0 + i) * width + li * p.dim;
        row.copy_from_slice(&ple[at..at + p.dim]);
    }
    act_mul_inplace(cfg.layers[li].mlp.act, &mut g, &pl);
    gemm.matmul_wt(&g, n, proj, delta, h, false);
    add_normed(xs, delta, &norm.data.to_f32_vec(), cfg.rms_norm_eps);
}
