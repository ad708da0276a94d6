//! Olmo 3 (`Olmo3ForCausalLM`): post-norm blocks without input norms,
//! `x += norm(o(attn(x)))`, `x += norm(mlp(x))`; q/k RMSNorm over the whole
//! projection width (all heads jointly) before the head split; sliding-window
//! layers from `layer_types`; the configured RoPE scaling (YaRN) on the
//! full-attention layers only, plain RoPE with the same θ on sliding ones.

use serde_json::json;

use super::super::config::{
    Act, Arch, AttnDesc, Config, Keys, LayerDesc, Mixer, MlpDesc, Norms, QkNorm,
};
use super::super::rope::{self, RopeScaling};
use super::{Common, require_act};
use crate::Result;

pub(super) fn describe(k: Keys) -> Result<Config> {
    let c = Common::read(k, false)?;
    require_act(k, &["silu"])?;
    k.reject("mlp_bias", &[json!(false)], "biases on the MLP projections")?;
    // transformers 5 writes `rope_parameters` per layer type; 4.x a
    // top-level `rope_theta` + `rope_scaling` that applies to full layers.
    let per_type = k
        .get("rope_parameters")
        .filter(|p| p.get("full_attention").is_some());
    let (full_rope, sliding_rope) = match per_type {
        Some(p) => {
            let of = |t: &str| -> Result<_> {
                let (theta, scaling) = rope::parse(k, p.get(t), c.max_positions)?;
                Ok(rope::rope(theta, &scaling, c.head_dim, c.head_dim))
            };
            (of("full_attention")?, of("sliding_attention")?)
        }
        None => {
            let (theta, scaling) = rope::parse(k, None, c.max_positions)?;
            (
                rope::rope(theta, &scaling, c.head_dim, c.head_dim),
                rope::rope(theta, &RopeScaling::None, c.head_dim, c.head_dim),
            )
        }
    };
    let window = k.opt_usize("sliding_window")?;
    let types = k
        .layer_types(c.layers, &["full_attention", "sliding_attention"])?
        .unwrap_or_else(|| vec!["full_attention".into(); c.layers]);
    let bias = k.bool_or("attention_bias", false)?;
    let mut layers = Vec::with_capacity(c.layers);
    for t in &types {
        let sliding = t == "sliding_attention";
        if sliding && window.is_none() {
            return Err(k.err("`layer_types` has sliding layers but `sliding_window` is missing"));
        }
        layers.push(LayerDesc {
            mixer: Mixer::Attention(AttnDesc {
                num_heads: c.heads,
                num_kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                window: if sliding { window } else { None },
                rope: if sliding {
                    sliding_rope.clone()
                } else {
                    full_rope.clone()
                },
                qk_norm: QkNorm::FullWidth,
                v_norm: false,
                bias,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                kv_from: None,
                output_gate: false,
            }),
            mlp: MlpDesc {
                intermediate: c.intermediate,
                act: Act::Silu,
            },
            norms: Norms::POST,
            per_layer_input: false,
            layer_scalar: false,
        });
    }
    Ok(c.plain_config(Arch::Olmo3, layers))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use crate::model::Config;
    use crate::model::config::{Norms, QkNorm};

    #[test]
    fn olmo3_is_post_norm_with_full_width_qk_norm_and_yarn_on_full_layers_only() {
        let v = json!({"architectures": ["Olmo3ForCausalLM"], "hidden_size": 48, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
            "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16,
            "rope_theta": 5e5, "rope_scaling": {"rope_type": "yarn", "factor": 8.0,
            "original_max_position_embeddings": 64, "attention_factor": 1.2}});
        let c = Config::from_json(&v, Path::new("c")).unwrap();
        let (s, f) = (&c.layers[0], &c.layers[1]);
        assert_eq!(s.norms, Norms::POST);
        assert_eq!(s.attn().unwrap().qk_norm, QkNorm::FullWidth);
        assert_eq!(
            (s.attn().unwrap().window, f.attn().unwrap().window),
            (Some(16), None)
        );
        assert_eq!(
            (
                s.attn().unwrap().rope.attention_factor,
                f.attn().unwrap().rope.attention_factor
            ),
            (1.0, 1.2)
        );
        assert_eq!(
            s.attn().unwrap().rope.inv_freq[0],
            f.attn().unwrap().rope.inv_freq[0]
        );
        assert_ne!(
            s.attn().unwrap().rope.inv_freq[5],
            f.attn().unwrap().rope.inv_freq[5]
        );
    }
}
