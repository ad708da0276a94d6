//! Qwen 3.5, the text decoder of `Qwen3_5ForConditionalGeneration` (hub
//! checkpoints: `model.language_model.*` beside a vision tower
//! `model.visual.*` and multi-token-prediction heads `mtp.*` that a scorer
//! ignores; `config.json` nests `text_config`) and of `Qwen3_5ForCausalLM`
//! directories (flat config, `model.*`).
//!
//! A hybrid of pre-norm SwiGLU blocks whose mixer is, by `layer_types`
//! (default: every `full_attention_interval`-th layer full), either gated
//! DeltaNet linear attention ([`DeltaNetDesc`]) or softmax attention with an
//! output gate in `q_proj`, per-head q/k norms and RoPE on the first
//! `partial_rotary_factor` of each head's dims (M-RoPE sections collapse to
//! plain 1-D RoPE for text). Layer, final and q/k norms are zero-centred,
//! `x̂ · (1 + w)` ([`NormKind::OnePlusWeight`]). Defaults are those of
//! transformers' `Qwen3_5TextConfig`.

use serde_json::json;

use super::super::config::{Arch, AttnDesc, Config, DeltaNetDesc, Keys, Mixer, NormKind, QkNorm};
use super::super::rope::{self, RopeScaling};
use super::{Common, require_act};
use crate::Result;

const LINEAR: &str = "linear_attention";
const FULL: &str = "full_attention";

pub(super) fn describe(top: Keys, arch_name: &str) -> Result<Config> {
    let (k, mut c) = Common::read_text(top, false)?;
    if k.get("head_dim").is_none() {
        c.head_dim = 256;
    }
    require_act(k, &["silu"])?;
    k.reject("attention_bias", &[json!(false)], "attention biases")?;
    k.reject(
        "attn_output_gate",
        &[json!(true)],
        "full attention without its output gate",
    )?;
    k.reject("rope_scaling", &[], "use `rope_parameters`")?;

    // RoPE: the first `partial_rotary_factor` of each head's dims.
    let params = k.object("rope_parameters")?;
    let (theta, scaling) = rope::parse(k, params, c.max_positions)?;
    if scaling != RopeScaling::None {
        return Err(k.err(format!(
            "`rope_parameters.rope_type`: {scaling:?} is not supported for Qwen 3.5 (only `default`)"
        )));
    }
    let factor = match params.map(|p| Keys::new(p, k.path).opt_f32("partial_rotary_factor")) {
        Some(f) => f?,
        None => None,
    };
    let factor = match factor {
        Some(f) => f,
        None => k.f32_or("partial_rotary_factor", 0.25)?,
    };
    if !(factor > 0.0 && factor <= 1.0) {
        return Err(k.err(format!(
            "`partial_rotary_factor` must be in (0, 1], not {factor}"
        )));
    }
    let rotary_dim = (c.head_dim as f32 * factor) as usize;
    let rope = rope::rope(theta, &scaling, c.head_dim, rotary_dim);

    let n = c.layers;
    let types = match k.layer_types(n, &[LINEAR, FULL])? {
        Some(t) => t,
        None => {
            let every = k.opt_usize("full_attention_interval")?.unwrap_or(4).max(1);
            (0..n)
                .map(|i| if (i + 1) % every == 0 { FULL } else { LINEAR }.into())
                .collect()
        }
    };
    let linear = DeltaNetDesc {
        num_k_heads: k.opt_usize("linear_num_key_heads")?.unwrap_or(16),
        num_v_heads: k.opt_usize("linear_num_value_heads")?.unwrap_or(32),
        k_head_dim: k.opt_usize("linear_key_head_dim")?.unwrap_or(128),
        v_head_dim: k.opt_usize("linear_value_head_dim")?.unwrap_or(128),
        conv_kernel: k.opt_usize("linear_conv_kernel_dim")?.unwrap_or(4),
    };
    let attn = AttnDesc {
        num_heads: c.heads,
        num_kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        window: None,
        rope,
        qk_norm: QkNorm::PerHead,
        v_norm: false,
        bias: false,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
        kv_from: None,
        output_gate: true,
    };
    let layers = types
        .iter()
        .map(|t| {
            c.pre_norm_swiglu(if t == FULL {
                Mixer::Attention(attn.clone())
            } else {
                Mixer::GatedDeltaNet(linear)
            })
        })
        .collect();
    let mut cfg = c.plain_config(Arch::Qwen3_5, layers);
    cfg.norm = NormKind::OnePlusWeight;
    cfg.ignored.push("mtp.".into());
    if arch_name == "Qwen3_5ForConditionalGeneration" {
        cfg.prefix = "model.language_model.".into();
        cfg.ignored.push("model.visual.".into());
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use crate::model::Config;
    use crate::model::config::{Mixer, NormKind};

    /// The fixture's config in the hub form.
    fn hub() -> Value {
        json!({"architectures": ["Qwen3_5ForConditionalGeneration"], "tie_word_embeddings": true,
            "vision_config": {"depth": 1, "hidden_size": 16},
            "text_config": {
            "attention_bias": false, "attn_output_gate": true, "full_attention_interval": 4,
            "head_dim": 16, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 32,
            "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16, "linear_num_key_heads": 2,
            "linear_num_value_heads": 4, "linear_value_head_dim": 16, "mamba_ssm_dtype": "float32",
            "max_position_embeddings": 4096, "num_attention_heads": 4, "num_hidden_layers": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "vocab_size": 512,
            "rope_parameters": {"mrope_interleaved": true, "mrope_section": [1, 1, 0],
                "partial_rotary_factor": 0.25, "rope_theta": 1e7, "rope_type": "default"}}})
    }

    fn parse(v: &Value) -> crate::Result<Config> {
        Config::from_json(v, Path::new("config.json"))
    }

    #[test]
    fn the_hub_form_describes_deltanet_and_gated_attention_layers() {
        let c = parse(&hub()).unwrap();
        assert_eq!(c.prefix, "model.language_model.");
        assert!(c.ignored.iter().any(|p| p == "model.visual."));
        assert!(c.ignored.iter().any(|p| p == "mtp."));
        assert_eq!(c.norm, NormKind::OnePlusWeight);
        let d = c.layers[0].deltanet().unwrap();
        assert_eq!(
            (d.num_k_heads, d.num_v_heads, d.k_head_dim, d.conv_dim()),
            (2, 4, 16, 128)
        );
        let a = c.layers[3].attn().unwrap();
        assert!(a.output_gate);
        assert_eq!(a.rope.rotary_dim, 4);
        assert_eq!(a.rope.inv_freq, [1.0, 1.0 / 1e7f32.powf(0.5)]);
        assert_eq!(c.norm, crate::model::config::NormKind::OnePlusWeight);
        assert_eq!(
            c.layers.iter().filter(|l| l.deltanet().is_some()).count(),
            3
        );
        assert!(a.rope.rotary_dim < a.head_dim);
        assert!(c.is_hybrid());
    }

    #[test]
    fn a_causal_lm_directory_and_the_default_layer_pattern_give_the_same_model() {
        let mut flat = hub()["text_config"].clone();
        flat["architectures"] = json!(["Qwen3_5ForCausalLM"]);
        flat.as_object_mut().unwrap().remove("layer_types");
        let f = parse(&flat).unwrap();
        assert_eq!(f.prefix, "model.");
        assert_eq!(f.layers, parse(&hub()).unwrap().layers);
        let kinds: Vec<bool> = f
            .layers
            .iter()
            .map(|l| matches!(l.mixer, Mixer::Attention(_)))
            .collect();
        assert_eq!(kinds, [false, false, false, true]);
    }

    #[test]
    fn qwen3_5_keys_padv_does_not_run_are_refused_by_name() {
        for (key, val) in [
            ("attn_output_gate", json!(false)),
            ("attention_bias", json!(true)),
            ("hidden_act", json!("gelu")),
            ("layer_types", json!(["linear_attention"])),
            ("linear_num_key_heads", json!(3)),
        ] {
            let mut v = hub();
            v["text_config"][key] = val;
            let e = parse(&v).unwrap_err().to_string();
            let name = if key == "linear_num_key_heads" {
                "linear_num_value_heads"
            } else {
                key
            };
            assert!(e.contains(name), "{key}: {e}");
        }
        let mut v = hub();
        v["text_config"]["rope_parameters"]["rope_type"] = json!("linear");
        v["text_config"]["rope_parameters"]["factor"] = json!(2.0);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("rope_type"), "{e}");
    }
}
