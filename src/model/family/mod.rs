//! One file per model family: each turns a `config.json` into the model
//! description ([`Config`]) and says where the family's tensors live
//! (prefix, ignored towers). Tensor names follow from the description
//! ([`super::layout`]); a family with a new kind of block adds it there and
//! in the backends.
//!
//! Adding a family: a file here with `describe`, a row in [`SUPPORTED`],
//! fixtures with transformers' log-probs, and (for `padv synth`) a shape.

mod gemma4;
mod llama;
mod olmo3;
mod qwen3_5;

use std::path::Path;

use serde_json::Value;

use super::config::{
    Act, Arch, Config, EmbedDesc, Keys, LayerDesc, Mixer, MlpDesc, NormKind, Norms,
};
use crate::{Error, Result};

/// `architectures[0]` values we run.
pub const SUPPORTED: [(&str, Arch); 9] = [
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Mistral),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
    ("Olmo3ForCausalLM", Arch::Olmo3),
    ("Gemma4ForConditionalGeneration", Arch::Gemma4),
    ("Gemma4ForCausalLM", Arch::Gemma4),
    ("Qwen3_5ForConditionalGeneration", Arch::Qwen3_5),
    ("Qwen3_5ForCausalLM", Arch::Qwen3_5),
];

/// Describe the model of a `config.json`.
pub fn describe(v: &Value, path: &Path) -> Result<Config> {
    let supported = || {
        SUPPORTED
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let k = Keys::new(v, path);
    let arch_name = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            k.err(format!(
                "missing `architectures[0]`; supported: {}",
                supported()
            ))
        })?;
    let (name, arch) = SUPPORTED
        .iter()
        .find(|(n, _)| *n == arch_name)
        .copied()
        .ok_or_else(|| Error::UnsupportedArch {
            path: path.to_path_buf(),
            arch: arch_name.to_string(),
            supported: supported(),
        })?;
    let mut cfg = match arch {
        Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => llama::describe(k, arch),
        Arch::Olmo3 => olmo3::describe(k),
        Arch::Gemma4 => gemma4::describe(k, arch_name),
        Arch::Qwen3_5 => qwen3_5::describe(k, arch_name),
    }?;
    cfg.arch_name = name;
    Ok(cfg)
}

/// The widest attention head a config may declare (real models: ≤ 512).
pub(crate) const MAX_HEAD_DIM: usize = 1 << 13;

/// Keys every decoder reads the same way.
struct Common {
    hidden: usize,
    vocab: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f32,
    max_positions: usize,
    tied: bool,
}

impl Common {
    fn read(k: Keys, tied_default: bool) -> Result<Common> {
        let hidden = k.usize("hidden_size")?;
        let heads = k.usize("num_attention_heads")?;
        let kv_heads = k.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match k.opt_usize("head_dim")? {
            Some(h) => h,
            None => {
                if heads == 0 || hidden % heads != 0 {
                    return Err(k.err(
                        "`hidden_size` is not divisible by `num_attention_heads` and no `head_dim` is given",
                    ));
                }
                hidden / heads
            }
        };
        // Sizes far beyond any real model are config errors, refused before
        // anything is allocated from them (the tensors are checked later).
        for (key, v, max) in [
            (
                "num_hidden_layers",
                k.opt_usize("num_hidden_layers")?.unwrap_or(0),
                4096,
            ),
            ("hidden_size", hidden, 1 << 20),
            ("head_dim", head_dim, MAX_HEAD_DIM),
            ("num_attention_heads", heads, 1 << 14),
            ("num_key_value_heads", kv_heads, 1 << 14),
            (
                "intermediate_size",
                k.opt_usize("intermediate_size")?.unwrap_or(0),
                1 << 22,
            ),
            (
                "vocab_size",
                k.opt_usize("vocab_size")?.unwrap_or(0),
                1 << 26,
            ),
        ] {
            if v > max {
                return Err(k.err(format!(
                    "`{key}` is {v}, beyond any model padv can load (≤ {max})"
                )));
            }
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(k.err(format!(
                "`num_attention_heads` ({heads}) must be a multiple of `num_key_value_heads` ({kv_heads})"
            )));
        }
        Ok(Common {
            hidden,
            vocab: k.usize("vocab_size")?,
            layers: k.usize("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            intermediate: k.usize("intermediate_size")?,
            eps: k.f32_or("rms_norm_eps", 1e-6)?,
            max_positions: k
                .opt_usize("max_position_embeddings")?
                .unwrap_or(usize::MAX),
            tied: k.bool_or("tie_word_embeddings", tied_default)?,
        })
    }
}

impl Common {
    /// The decoder keys of a config that may nest them in `text_config`
    /// (multimodal wrappers) and the common keys read from them; a top-level
    /// `tie_word_embeddings` wins over the nested one.
    fn read_text(top: Keys, tied_default: bool) -> Result<(Keys, Common)> {
        let k = top.nested("text_config").unwrap_or(top);
        let mut c = Common::read(k, tied_default)?;
        c.tied = top.bool_or(
            "tie_word_embeddings",
            k.bool_or("tie_word_embeddings", tied_default)?,
        )?;
        Ok((k, c))
    }

    /// A pre-norm SwiGLU block around `mixer` (Llama and its descendants).
    fn pre_norm_swiglu(&self, mixer: Mixer) -> LayerDesc {
        LayerDesc {
            mixer,
            mlp: MlpDesc {
                intermediate: self.intermediate,
                act: Act::Silu,
            },
            norms: Norms::PRE,
            per_layer_input: false,
            layer_scalar: false,
        }
    }

    /// A text decoder of `layers` under `model.*`: no embedding scale, no
    /// per-layer embeddings, no logit cap.
    fn plain_config(&self, arch: Arch, layers: Vec<LayerDesc>) -> Config {
        Config {
            arch,
            arch_name: arch.hf_name(),
            hidden_size: self.hidden,
            vocab_size: self.vocab,
            num_layers: self.layers,
            rms_norm_eps: self.eps,
            norm: NormKind::Weight,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings: self.tied,
            prefix: "model.".into(),
            ignored: Vec::new(),
            embed: EmbedDesc {
                scale: None,
                per_layer: None,
            },
            layers,
            final_logit_softcap: None,
        }
    }
}

/// The activation key (`hidden_act` or `hidden_activation`) must be `want`.
fn require_act(k: Keys, want: &[&str]) -> Result<()> {
    for key in ["hidden_act", "hidden_activation"] {
        if let Some(a) = k.opt_str(key)?
            && !want.contains(&a)
        {
            return Err(k.err(format!(
                "`{key}: \"{a}\"` is not supported for this architecture (expected {}); padv would compute a different model",
                want.join(" or ")
            )));
        }
    }
    Ok(())
}
