//! The Llama decoder family: Llama 2/3, Mistral (sliding window), Qwen2
//! (q/k/v bias) and Qwen3 (per-head q/k RMSNorm, explicit head_dim). One
//! pre-norm SwiGLU block repeated:
//! `x += o(attn(rope(q(n1 x)), rope(k(n1 x)), v(n1 x)))`,
//! `x += down(silu(gate(n2 x)) · up(n2 x))`.

use serde_json::json;

use super::super::config::{Arch, AttnDesc, Config, Keys, Mixer, QkNorm};
use super::super::rope;
use super::{Common, require_act};
use crate::Result;

pub(super) fn describe(k: Keys, arch: Arch) -> Result<Config> {
    let c = Common::read(k, false)?;
    require_act(k, &["silu"])?;
    k.reject("mlp_bias", &[json!(false)], "biases on the MLP projections")?;
    let (theta, scaling) = rope::parse(k, None, c.max_positions)?;
    let rope = rope::rope(theta, &scaling, c.head_dim, c.head_dim);

    let window = k.opt_usize("sliding_window")?;
    let windows: Vec<Option<usize>> =
        match k.layer_types(c.layers, &["full_attention", "sliding_attention"])? {
            Some(types) => types
                .iter()
                .map(|t| (t == "sliding_attention").then_some(window).flatten())
                .collect(),
            None => match arch {
                Arch::Mistral => vec![window; c.layers],
                Arch::Qwen2 | Arch::Qwen3 => {
                    let on = k.bool_or("use_sliding_window", false)?;
                    let from = k.opt_usize("max_window_layers")?.unwrap_or(c.layers);
                    (0..c.layers)
                        .map(|i| if on && i >= from { window } else { None })
                        .collect()
                }
                _ => vec![None; c.layers],
            },
        };
    let bias = arch == Arch::Qwen2 || k.bool_or("attention_bias", false)?;
    let layers = windows
        .into_iter()
        .map(|window| {
            c.pre_norm_swiglu(Mixer::Attention(AttnDesc {
                num_heads: c.heads,
                num_kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                window,
                rope: rope.clone(),
                qk_norm: if arch == Arch::Qwen3 {
                    QkNorm::PerHead
                } else {
                    QkNorm::None
                },
                v_norm: false,
                bias,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                kv_from: None,
                output_gate: false,
            }))
        })
        .collect();
    Ok(c.plain_config(arch, layers))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use crate::Result;
    use crate::model::Config;

    fn base(extra: Value) -> Value {
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "some_future_key": {"anything": true}
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn parse(extra: Value) -> Result<Config> {
        Config::from_json(&base(extra), Path::new("config.json"))
    }

    #[test]
    fn a_plain_llama_config_is_a_pre_norm_decoder_of_identical_layers() {
        let c = parse(json!({"rope_theta": 5e5})).unwrap();
        assert_eq!(c.layers.len(), 2);
        assert_eq!(c.layers[0], c.layers[1]);
        let (l, a) = (&c.layers[0], c.layers[0].attn().unwrap());
        assert_eq!((a.num_heads, a.num_kv_heads, a.head_dim), (4, 2, 16));
        assert_eq!((a.window, a.kv_from, a.scale), (None, None, 0.25));
        assert!(!a.bias && a.qk_norm == crate::model::config::QkNorm::None);
        assert_eq!(l.norms, crate::model::config::Norms::PRE);
        assert_eq!(l.mlp.act, crate::model::config::Act::Silu);
    }

    #[test]
    fn sliding_windows_follow_layer_types_then_the_architecture_defaults() {
        let c = parse(
            json!({"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}),
        )
        .unwrap();
        let w = |c: &Config| {
            c.layers
                .iter()
                .map(|l| l.attn().unwrap().window)
                .collect::<Vec<_>>()
        };
        assert_eq!(w(&c), vec![Some(8), None]);
        let mut v = base(json!({"sliding_window": 8}));
        v["architectures"] = json!(["MistralForCausalLM"]);
        let m = Config::from_json(&v, Path::new("c")).unwrap();
        assert_eq!(w(&m), vec![Some(8), Some(8)]);
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        let q = Config::from_json(&v, Path::new("c")).unwrap();
        assert_eq!(w(&q), vec![None, None], "Qwen2 needs use_sliding_window");
        assert!(q.layers[0].attn().unwrap().bias);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = parse(json!({"num_key_value_heads": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = parse(json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dynamic") && e.contains("llama3"), "{e}");
        let mut v = base(json!({}));
        v.as_object_mut().unwrap().remove("vocab_size");
        let e = Config::from_json(&v, Path::new("x/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/config.json") && e.contains("vocab_size"),
            "{e}"
        );
    }

    #[test]
    fn keys_that_change_the_computation_are_refused_by_name() {
        for (extra, key) in [
            (json!({"hidden_act": "gelu"}), "hidden_act"),
            (json!({"mlp_bias": true}), "mlp_bias"),
            (
                json!({"layer_types": ["full_attention", "linear_attention"]}),
                "layer_types[1]",
            ),
            (json!({"layer_types": ["full_attention"]}), "layer_types"),
            (json!({"rms_norm_eps": -1.0}), "rms_norm_eps"),
            (json!({"rope_theta": 0}), "rope_theta"),
            (
                json!({"num_hidden_layers": 1_000_000_000u64}),
                "num_hidden_layers",
            ),
        ] {
            let e = parse(extra.clone()).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        assert!(parse(json!({"hidden_act": "silu", "mlp_bias": false})).is_ok());
    }
}
