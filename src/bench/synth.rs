//! Random-weight checkpoints of real architectures' shapes, for benchmarks:
//! `padv synth --shape qwen2.5-0.5b --out DIR` writes `config.json` and
//! `model.safetensors` (bf16 by default) plus a word-level tokenizer, that [`crate::model::Model::load`]
//! reads like any Hugging Face directory. Nothing large is committed.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::model::{Config, DType};
use crate::{Error, Result};

/// A named real-model shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub arch: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    pub rope_theta: f64,
}

pub const SHAPES: &[Shape] = &[
    Shape {
        name: "qwen2.5-0.5b",
        arch: "Qwen2ForCausalLM",
        hidden: 896,
        intermediate: 4864,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        vocab: 151_936,
        tied: true,
        rope_theta: 1e6,
    },
    Shape {
        name: "qwen2.5-7b",
        arch: "Qwen2ForCausalLM",
        hidden: 3584,
        intermediate: 18944,
        layers: 28,
        heads: 28,
        kv_heads: 4,
        head_dim: 128,
        vocab: 152_064,
        tied: false,
        rope_theta: 1e6,
    },
    Shape {
        name: "qwen3-0.6b",
        arch: "Qwen3ForCausalLM",
        hidden: 1024,
        intermediate: 3072,
        layers: 28,
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        vocab: 151_936,
        tied: true,
        rope_theta: 1e6,
    },
    Shape {
        name: "smollm2-135m",
        arch: "LlamaForCausalLM",
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49_152,
        tied: true,
        rope_theta: 1e5,
    },
    Shape {
        name: "llama-3.2-1b",
        arch: "LlamaForCausalLM",
        hidden: 2048,
        intermediate: 8192,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
        vocab: 128_256,
        tied: true,
        rope_theta: 5e5,
    },
];

pub fn shape(name: &str) -> Result<Shape> {
    SHAPES
        .iter()
        .find(|s| s.name == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
            Error::input(
                "--shape",
                format!("unknown shape `{name}`; known: {}", names.join(", ")),
            )
        })
}

impl Shape {
    /// The `config.json` a Hugging Face export of this shape would carry.
    pub fn config_json(&self, dtype: DType) -> serde_json::Value {
        let model_type = match self.arch {
            "Qwen2ForCausalLM" => "qwen2",
            "Qwen3ForCausalLM" => "qwen3",
            _ => "llama",
        };
        let mut c = json!({
            "architectures": [self.arch],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768,
            "hidden_act": "silu",
            "torch_dtype": match dtype { DType::BF16 => "bfloat16", DType::F16 => "float16", DType::F32 => "float32" },
        });
        if self.name.starts_with("llama-3") {
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        }
        c
    }

    /// The [`Config`] that loading this shape's `config.json` gives.
    pub fn config(&self, dtype: DType) -> Result<Config> {
        Config::from_json(&self.config_json(dtype), Path::new(self.name))
    }

    /// (name, shape) of every tensor.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let (qd, kvd) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            let mut add = |n: &str, s: Vec<usize>| t.push((format!("{p}{n}"), s));
            add("input_layernorm.weight", vec![h]);
            add("post_attention_layernorm.weight", vec![h]);
            add("self_attn.q_proj.weight", vec![qd, h]);
            add("self_attn.k_proj.weight", vec![kvd, h]);
            add("self_attn.v_proj.weight", vec![kvd, h]);
            add("self_attn.o_proj.weight", vec![h, qd]);
            if self.arch == "Qwen2ForCausalLM" {
                add("self_attn.q_proj.bias", vec![qd]);
                add("self_attn.k_proj.bias", vec![kvd]);
                add("self_attn.v_proj.bias", vec![kvd]);
            }
            if self.arch == "Qwen3ForCausalLM" {
                add("self_attn.q_norm.weight", vec![self.head_dim]);
                add("self_attn.k_norm.weight", vec![self.head_dim]);
            }
            add("mlp.gate_proj.weight", vec![i, h]);
            add("mlp.up_proj.weight", vec![i, h]);
            add("mlp.down_proj.weight", vec![h, i]);
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        t
    }

    pub fn num_params(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// Write a random-weight checkpoint of `shape` into `out`. Norm weights are 1,
/// biases small, matrices uniform with std 0.02 (the usual init scale), so
/// activations stay finite through every layer.
pub fn write(shape: &Shape, out: &Path, dtype: DType, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("config.json");
    let cfg = serde_json::to_string_pretty(&shape.config_json(dtype)).expect("json");
    std::fs::write(&cfg_path, cfg).map_err(|e| Error::io(&cfg_path, e))?;

    let mut rng = SmallRng::seed_from_u64(seed);
    let a = 0.02f32 * 3f32.sqrt();
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, dims) in shape.tensors() {
        let n: usize = dims.iter().product();
        let vals: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        let bytes = match dtype {
            DType::F32 => bytemuck::cast_slice(&vals).to_vec(),
            DType::BF16 => vals
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            DType::F16 => vals
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        };
        buffers.push((name, dims, bytes));
    }
    let st = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    };
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, d, b)| {
            (
                n.clone(),
                TensorView::new(st, d.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let path = out.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| Error::config(&path, format!("writing safetensors: {e}")))?;
    write_tokenizer(shape.vocab, out)
}

/// A word-level tokenizer over `<t0> … <tN>` so the checkpoint loads like any
/// HF directory (`padv score` on `{"token_ids": [...]}` records, chat records
/// of space-separated `<tK>` words).
fn write_tokenizer(vocab: usize, out: &Path) -> Result<()> {
    let words: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|i| (format!("<t{i}>"), json!(i))).collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": words, "unk_token": "<t0>"}
    });
    let path = out.join("tokenizer.json");
    std::fs::write(&path, tok.to_string()).map_err(|e| Error::io(&path, e))?;
    let cfg = json!({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<t0>", "unk_token": "<t0>"});
    let path = out.join("tokenizer_config.json");
    std::fs::write(&path, cfg.to_string()).map_err(|e| Error::io(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::tokenizer::TokenizerBundle;

    #[test]
    fn a_synthesized_checkpoint_loads_with_its_tokenizer() {
        let tiny = Shape {
            name: "tiny",
            arch: "Qwen2ForCausalLM",
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            vocab: 50,
            tied: true,
            rope_theta: 1e4,
        };
        let dir = tempfile::tempdir().unwrap();
        write(&tiny, dir.path(), DType::BF16, 3).unwrap();
        let m = Model::load(dir.path()).unwrap();
        assert_eq!(m.config.vocab_size, 50);
        assert_eq!(m.dtype(), DType::BF16);
        assert_eq!(
            tiny.num_params(),
            50 * 32 + 2 * (2 * 32 + 32 * 32 * 2 + 16 * 32 * 2 + 32 + 16 * 2 + 3 * 32 * 64) + 32
        );
        let tok = TokenizerBundle::load(dir.path()).unwrap();
        assert_eq!(tok.encode("<t3> <t49>", false).unwrap(), vec![3, 49]);
    }
}
