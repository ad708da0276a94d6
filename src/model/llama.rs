//! The Llama decoder family: Llama 2/3, Mistral, Qwen2 (q/k/v bias) and Qwen3
//! (per-head q/k RMSNorm, explicit head_dim). One pre-norm block repeated:
//! `x += o(attn(rope(q(n1 x)), rope(k(n1 x)), v(n1 x)))`, `x += down(silu(gate(n2 x)) * up(n2 x))`.
//! This file names and shape-checks the tensors; the compute lives in the
//! backends.

use super::config::Config;
use super::weights::{Tensor, Weights};
use crate::Result;

/// The tensors of one decoder layer.
pub struct LayerWeights<'a> {
    pub input_norm: Tensor<'a>,
    pub q: Tensor<'a>,
    pub k: Tensor<'a>,
    pub v: Tensor<'a>,
    pub q_bias: Option<Tensor<'a>>,
    pub k_bias: Option<Tensor<'a>>,
    pub v_bias: Option<Tensor<'a>>,
    pub q_norm: Option<Tensor<'a>>,
    pub k_norm: Option<Tensor<'a>>,
    pub o: Tensor<'a>,
    pub post_norm: Tensor<'a>,
    pub gate: Tensor<'a>,
    pub up: Tensor<'a>,
    pub down: Tensor<'a>,
}

/// All tensors of a decoder, shape-checked against its config.
pub struct DecoderWeights<'a> {
    pub embed: Tensor<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    pub final_norm: Tensor<'a>,
    /// `lm_head.weight`, or the embedding when tied.
    pub lm_head: Tensor<'a>,
}

impl<'a> DecoderWeights<'a> {
    /// Look up every tensor the config implies; the first missing or
    /// mis-shaped one is reported by name.
    pub fn bind(cfg: &Config, w: &'a Weights) -> Result<DecoderWeights<'a>> {
        let h = cfg.hidden_size;
        let qd = cfg.num_heads * cfg.head_dim;
        let kvd = cfg.num_kv_heads * cfg.head_dim;
        let i = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}.");
            let t = |n: &str, s: &[usize]| w.get(&format!("{p}{n}"), s);
            let bias = |n: &str, d: usize| -> Result<Option<Tensor<'a>>> {
                if cfg.qkv_bias {
                    Ok(Some(w.get(&format!("{p}self_attn.{n}_proj.bias"), &[d])?))
                } else {
                    Ok(None)
                }
            };
            let qk_norm = |n: &str| -> Result<Option<Tensor<'a>>> {
                if cfg.qk_norm {
                    Ok(Some(w.get(
                        &format!("{p}self_attn.{n}_norm.weight"),
                        &[cfg.head_dim],
                    )?))
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                input_norm: t("input_layernorm.weight", &[h])?,
                q: t("self_attn.q_proj.weight", &[qd, h])?,
                k: t("self_attn.k_proj.weight", &[kvd, h])?,
                v: t("self_attn.v_proj.weight", &[kvd, h])?,
                q_bias: bias("q", qd)?,
                k_bias: bias("k", kvd)?,
                v_bias: bias("v", kvd)?,
                q_norm: qk_norm("q")?,
                k_norm: qk_norm("k")?,
                o: t("self_attn.o_proj.weight", &[h, qd])?,
                post_norm: t("post_attention_layernorm.weight", &[h])?,
                gate: t("mlp.gate_proj.weight", &[i, h])?,
                up: t("mlp.up_proj.weight", &[i, h])?,
                down: t("mlp.down_proj.weight", &[h, i])?,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let lm_head = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, h])?
        };
        Ok(DecoderWeights {
            embed,
            layers,
            final_norm: w.get("model.norm.weight", &[h])?,
            lm_head,
        })
    }
}
