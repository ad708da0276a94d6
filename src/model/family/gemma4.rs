//! Gemma 4, the text decoder of `Gemma4ForConditionalGeneration` (hub
//! checkpoints: `model.language_model.*` beside vision and audio towers that
//! a scorer ignores) and of `Gemma4ForCausalLM` directories.
//!
//! Sandwich-norm GeGLU blocks with plain-weight RMSNorms; attention with
//! per-head q/k norms, a weightless v norm and scale 1; sliding layers
//! (`head_dim`, default RoPE) and full layers (`global_head_dim` or the
//! `per_layer_config` transformers writes, proportional RoPE); the last
//! `num_kv_shared_layers` layers read the K/V of the last earlier layer of
//! their type; per-layer embeddings feed every layer; each layer ends by
//! scaling the hidden state with a stored scalar; the final logits are
//! soft-capped. Embedding scales are √hidden and √ple_dim, rounded to the
//! weight dtype at run time as transformers does.

use serde_json::{Value, json};

use super::super::config::{
    Act, Arch, AttnDesc, Config, EmbedDesc, Keys, LayerDesc, Mixer, MlpDesc, NormKind, Norms,
    PerLayerEmbed, QkNorm,
};
use super::super::rope::{self, RopeScaling};
use super::{Common, require_act};
use crate::Result;

const SLIDING: &str = "sliding_attention";
const FULL: &str = "full_attention";

pub(super) fn describe(top: Keys, arch_name: &str) -> Result<Config> {
    let (k, c) = Common::read_text(top, true)?;
    if k.get("head_dim").is_none() {
        return Err(k.err("missing `head_dim`"));
    }
    require_act(k, &["gelu_pytorch_tanh"])?;
    k.reject(
        "enable_moe_block",
        &[json!(false)],
        "mixture-of-experts blocks",
    )?;
    k.reject(
        "attention_k_eq_v",
        &[json!(false)],
        "full layers with K = V",
    )?;
    k.reject("attention_bias", &[json!(false)], "attention biases")?;
    k.reject(
        "use_bidirectional_attention",
        &[json!("vision")],
        "bidirectional text attention",
    )?;
    k.reject("rope_scaling", &[], "use `rope_parameters` per layer type")?;
    let n = c.layers;

    let mut types = k.layer_types(n, &[SLIDING, FULL])?.unwrap_or_else(|| {
        (0..n)
            .map(|i| if (i + 1) % 6 == 0 { FULL } else { SLIDING }.into())
            .collect()
    });
    // transformers forces the last layer to full attention.
    if let Some(last) = types.last_mut() {
        *last = FULL.into();
    }
    let window = k.opt_usize("sliding_window")?.unwrap_or(512);

    // Full-layer head dims: `per_layer_config` (what transformers writes)
    // wins over the hub's `global_head_dim` (missing: 512, null or 0: head_dim).
    let plc = k.get("per_layer_config");
    let full_head_dim = match (plc, k.v.get("global_head_dim")) {
        (Some(_), _) | (None, Some(Value::Null)) => c.head_dim,
        (None, None) => 512,
        (None, Some(_)) => match k.usize("global_head_dim")? {
            0 => c.head_dim,
            g if g > super::MAX_HEAD_DIM => {
                return Err(k.err(format!(
                    "`global_head_dim` is {g}, beyond any model padv can load (≤ {})",
                    super::MAX_HEAD_DIM
                )));
            }
            g => g,
        },
    };
    let mut head_dims: Vec<usize> = types
        .iter()
        .map(|t| {
            if t == SLIDING {
                c.head_dim
            } else {
                full_head_dim
            }
        })
        .collect();
    let mut kv_heads = vec![c.kv_heads; n];
    if let Some(plc) = plc {
        let obj = plc
            .as_object()
            .ok_or_else(|| k.err("`per_layer_config` must be an object keyed by layer index"))?;
        for (key, over) in obj {
            let li: usize = key.parse().ok().filter(|&l| l < n).ok_or_else(|| {
                k.err(format!(
                    "`per_layer_config` key `{key}` is not a layer index below {n}"
                ))
            })?;
            let ok = Keys::new(over, k.path);
            let fields = over
                .as_object()
                .ok_or_else(|| k.err(format!("`per_layer_config.{key}` must be an object")))?;
            for f in fields.keys() {
                if f != "head_dim" && f != "num_key_value_heads" {
                    return Err(k.err(format!(
                        "`per_layer_config.{key}.{f}` is not supported; padv would compute a different model"
                    )));
                }
            }
            if let Some(hd) = ok.opt_usize("head_dim")? {
                head_dims[li] = hd;
            }
            if let Some(kv) = ok.opt_usize("num_key_value_heads")? {
                kv_heads[li] = kv;
            }
        }
    }

    // RoPE per layer type.
    let params = k.get("rope_parameters");
    let default_params = json!({
        SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    });
    let params = params.unwrap_or(&default_params);
    let rope_of = |t: &str, hd: usize| -> Result<_> {
        let p = params
            .get(t)
            .ok_or_else(|| k.err(format!("`rope_parameters` has no `{t}` entry")))?;
        let (theta, scaling) = rope::parse(k, Some(p), c.max_positions)?;
        match (&scaling, t) {
            (RopeScaling::None, SLIDING) | (RopeScaling::Proportional { .. }, FULL) => {}
            _ => {
                return Err(k.err(format!(
                    "`rope_parameters.{t}`: rope type {scaling:?} is not what Gemma 4 uses for {t} layers"
                )));
            }
        }
        let factor = Keys::new(p, k.path).f32_or("factor", 1.0)?;
        let mut r = rope::rope(theta, &scaling, hd, hd);
        if factor != 1.0 {
            r.inv_freq.iter_mut().for_each(|f| *f /= factor);
        }
        Ok(r)
    };

    let shared = k.opt_usize("num_kv_shared_layers")?.unwrap_or(0);
    if shared >= n && shared > 0 {
        return Err(k.err(format!(
            "`num_kv_shared_layers` ({shared}) must be below `num_hidden_layers` ({n})"
        )));
    }
    let first_shared = n - shared;
    let double_wide = k.bool_or("use_double_wide_mlp", false)?;
    let ple_dim = match k.v.get("hidden_size_per_layer_input") {
        None => 256,
        Some(Value::Null) => 0,
        Some(_) => k.usize("hidden_size_per_layer_input")?,
    };
    let mut layers = Vec::with_capacity(n);
    for (li, t) in types.iter().enumerate() {
        let kv_from = if li >= first_shared && shared > 0 {
            let src = (0..first_shared)
                .rev()
                .find(|&j| types[j] == *t)
                .ok_or_else(|| {
                    k.err(format!(
                        "layer {li} shares K/V but no earlier layer is a {t} layer"
                    ))
                })?;
            Some(src)
        } else {
            None
        };
        let hd = head_dims[li];
        layers.push(LayerDesc {
            mixer: Mixer::Attention(AttnDesc {
                num_heads: c.heads,
                num_kv_heads: kv_heads[li],
                head_dim: hd,
                window: (t == SLIDING).then_some(window),
                rope: rope_of(t, hd)?,
                qk_norm: QkNorm::PerHead,
                v_norm: true,
                bias: false,
                scale: 1.0,
                kv_from,
                output_gate: false,
            }),
            mlp: MlpDesc {
                intermediate: if double_wide && kv_from.is_some() {
                    2 * c.intermediate
                } else {
                    c.intermediate
                },
                act: Act::GeluTanh,
            },
            norms: Norms::SANDWICH,
            per_layer_input: ple_dim > 0,
            layer_scalar: true,
        });
    }
    let per_layer = (ple_dim > 0)
        .then(|| -> Result<PerLayerEmbed> {
            Ok(PerLayerEmbed {
                dim: ple_dim,
                vocab: k
                    .opt_usize("vocab_size_per_layer_input")?
                    .unwrap_or(262_144),
                embed_scale: (ple_dim as f32).sqrt(),
                proj_scale: (c.hidden as f64).powf(-0.5) as f32,
                combine_scale: std::f64::consts::FRAC_1_SQRT_2 as f32,
            })
        })
        .transpose()?;
    let wrapped = arch_name == "Gemma4ForConditionalGeneration";
    Ok(Config {
        arch: Arch::Gemma4,
        arch_name: Arch::Gemma4.hf_name(),
        hidden_size: c.hidden,
        vocab_size: c.vocab,
        num_layers: n,
        rms_norm_eps: c.eps,
        norm: NormKind::Weight,
        max_position_embeddings: c.max_positions,
        tie_word_embeddings: c.tied,
        prefix: if wrapped {
            "model.language_model."
        } else {
            "model."
        }
        .into(),
        ignored: if wrapped {
            [
                "model.vision_tower.",
                "model.audio_tower.",
                "model.embed_vision.",
                "model.embed_audio.",
            ]
            .map(String::from)
            .to_vec()
        } else {
            Vec::new()
        },
        embed: EmbedDesc {
            scale: Some((c.hidden as f32).sqrt()),
            per_layer,
        },
        layers,
        final_logit_softcap: k.opt_f32("final_logit_softcapping")?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use crate::model::Config;
    use crate::model::config::QkNorm;

    /// The fixture's text config in the hub form.
    fn hub() -> Value {
        json!({"architectures": ["Gemma4ForConditionalGeneration"], "tie_word_embeddings": true,
            "text_config": {
            "hidden_size": 48, "intermediate_size": 32, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "global_head_dim": 32,
            "vocab_size": 512, "vocab_size_per_layer_input": 512, "hidden_size_per_layer_input": 8,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                            "sliding_attention", "sliding_attention", "full_attention"],
            "sliding_window": 8, "num_kv_shared_layers": 3, "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1e6, "rope_type": "proportional"},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}})
    }

    fn parse(v: &Value) -> crate::Result<Config> {
        Config::from_json(v, Path::new("config.json"))
    }

    #[test]
    fn the_hub_form_describes_sliding_and_full_layers_and_kv_sharing() {
        let c = parse(&hub()).unwrap();
        assert_eq!(c.prefix, "model.language_model.");
        let hd: Vec<usize> = c
            .layers
            .iter()
            .map(|l| l.attn().unwrap().head_dim)
            .collect();
        assert_eq!(hd, [16, 16, 32, 16, 16, 32]);
        let src: Vec<Option<usize>> = c.layers.iter().map(|l| l.attn().unwrap().kv_from).collect();
        assert_eq!(src, [None, None, None, Some(1), Some(1), Some(2)]);
        let l = c.layers[2].attn().unwrap();
        assert_eq!(
            (l.scale, l.window, l.qk_norm, l.v_norm),
            (1.0, None, QkNorm::PerHead, true)
        );
        assert_eq!(c.layers[0].attn().unwrap().window, Some(8));
        assert_eq!(c.final_logit_softcap, Some(30.0));
    }

    #[test]
    fn the_per_layer_config_form_transformers_writes_gives_the_same_model() {
        let mut v = hub();
        let t = v["text_config"].as_object_mut().unwrap();
        t.remove("global_head_dim");
        t.insert(
            "per_layer_config".into(),
            json!({"2": {"head_dim": 32}, "5": {"head_dim": 32}}),
        );
        assert_eq!(parse(&v).unwrap(), parse(&hub()).unwrap());
        // A text-only directory: flat config, no language_model prefix.
        let mut flat = hub()["text_config"].clone();
        flat["architectures"] = json!(["Gemma4ForCausalLM"]);
        let f = parse(&flat).unwrap();
        assert_eq!(f.prefix, "model.");
        assert_eq!(f.layers, parse(&hub()).unwrap().layers);
    }

    #[test]
    fn gemma4_keys_padv_does_not_run_are_refused_by_name() {
        for (key, val) in [
            ("enable_moe_block", json!(true)),
            ("attention_k_eq_v", json!(true)),
            ("hidden_activation", json!("silu")),
            ("use_bidirectional_attention", json!("all")),
            ("layer_types", json!(["sliding_attention"])),
        ] {
            let mut v = hub();
            v["text_config"][key] = val;
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let mut v = hub();
        v["text_config"]["per_layer_config"] = json!({"2": {"sliding_window": 4}});
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("per_layer_config.2.sliding_window"), "{e}");
        let mut v = hub();
        v["text_config"]["rope_parameters"]["full_attention"]["rope_type"] = json!("default");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("full_attention"), "{e}");
    }
}
