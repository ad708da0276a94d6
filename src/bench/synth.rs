//! Random-weight checkpoints of real architectures' shapes, for benchmarks:
//! `padv synth --shape qwen2.5-0.5b --out DIR` writes `config.json` and
//! `model.safetensors` (bf16 by default) plus a word-level tokenizer, that [`crate::model::Model::load`]
//! reads like any Hugging Face directory. The tensors are the model
//! description's table ([`crate::model::layout::table`]), the same one
//! loading checks. Nothing large is committed.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::model::{Config, DType, layout};
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
    /// Family keys beyond the common ones (layer types, windows, RoPE
    /// scaling, per-layer embeddings, …), written into `config.json`.
    pub extra: Option<fn(&mut serde_json::Value)>,
}

/// `layer_types` of `c`'s layer count: every `period`-th layer full
/// attention, the others `other` (`sliding_attention`, `linear_attention`).
fn layer_types(c: &serde_json::Value, period: u64, other: &str) -> serde_json::Value {
    let n = c["num_hidden_layers"].as_u64().unwrap_or(0);
    let full = |i: u64| (i + 1).is_multiple_of(period);
    json!(
        (0..n)
            .map(|i| if full(i) { "full_attention" } else { other })
            .collect::<Vec<_>>()
    )
}

/// Olmo 3: three sliding-window layers then a full one with YaRN.
fn olmo3_keys(c: &mut serde_json::Value) {
    c["model_type"] = json!("olmo3");
    c["layer_types"] = layer_types(c, 4, "sliding_attention");
    c["sliding_window"] = json!(4096);
    c["max_position_embeddings"] = json!(65536);
    c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192,
        "attention_factor": 1.2079441541679836, "beta_fast": 32.0, "beta_slow": 1.0});
}

/// Gemma 4 (text part): five sliding layers then a full one with twice the
/// head dim, per-layer embeddings, the last layers sharing K/V, soft-capped
/// logits. `global_head_dim` = 2·head_dim; PLE dim and shared layers from
/// the shape's layer count (E4B: 256 and 18 of 42).
fn gemma4_keys(c: &mut serde_json::Value) {
    let n = c["num_hidden_layers"].as_u64().unwrap_or(0);
    let hd = c["head_dim"].as_u64().unwrap_or(0);
    let vocab = c["vocab_size"].clone();
    c["model_type"] = json!("gemma4_text");
    c["layer_types"] = layer_types(c, 6, "sliding_attention");
    c["global_head_dim"] = json!(2 * hd);
    c["hidden_activation"] = json!("gelu_pytorch_tanh");
    c.as_object_mut().map(|o| o.remove("hidden_act"));
    c["sliding_window"] = json!(512);
    c["num_kv_shared_layers"] = json!(n * 3 / 7);
    c["hidden_size_per_layer_input"] = json!(if n >= 42 { 256 } else { 64 });
    c["vocab_size_per_layer_input"] = vocab;
    c["final_logit_softcapping"] = json!(30.0);
    c["rope_parameters"] = json!({
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}});
    c.as_object_mut().map(|o| o.remove("rope_theta"));
}

/// Qwen 3.5: three gated-DeltaNet layers then a gated full-attention one;
/// 128-dim DeltaNet heads, as many value heads as the hidden size holds
/// and half as many key heads (9B: 32 and 16), RoPE on a quarter of each
/// attention head's dims.
fn qwen3_5_keys(c: &mut serde_json::Value) {
    let hidden = c["hidden_size"].as_u64().unwrap_or(0);
    c["model_type"] = json!("qwen3_5_text");
    c["full_attention_interval"] = json!(4);
    c["layer_types"] = layer_types(c, 4, "linear_attention");
    c["attn_output_gate"] = json!(true);
    c["attention_bias"] = json!(false);
    c["linear_conv_kernel_dim"] = json!(4);
    c["linear_key_head_dim"] = json!(128);
    c["linear_value_head_dim"] = json!(128);
    c["linear_num_value_heads"] = json!((hidden / 128).max(1));
    c["linear_num_key_heads"] = json!((hidden / 256).max(1));
    c["max_position_embeddings"] = json!(262_144);
    c["rope_parameters"] =
        json!({"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25});
    c.as_object_mut().map(|o| o.remove("rope_theta"));
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
        extra: None,
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
        extra: None,
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
        extra: None,
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
        extra: None,
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
        extra: None,
    },
    // Olmo-3-7B (Olmo-3-7B-Instruct and its DPO reference).
    Shape {
        name: "olmo3-7b",
        arch: "Olmo3ForCausalLM",
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
        vocab: 100_278,
        tied: false,
        rope_theta: 5e5,
        extra: Some(olmo3_keys),
    },
    // Olmo 3's blocks at the size of Qwen2.5-0.5B, for CPU benches.
    Shape {
        name: "olmo3-0.5b",
        arch: "Olmo3ForCausalLM",
        hidden: 896,
        intermediate: 4864,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        vocab: 100_278,
        tied: false,
        rope_theta: 5e5,
        extra: Some(olmo3_keys),
    },
    // gemma-4-E4B's text decoder (42 layers, 18 sharing K/V, PLE 256).
    Shape {
        name: "gemma4-e4b",
        arch: "Gemma4ForCausalLM",
        hidden: 2560,
        intermediate: 10240,
        layers: 42,
        heads: 8,
        kv_heads: 2,
        head_dim: 256,
        vocab: 262_144,
        tied: true,
        rope_theta: 1e4,
        extra: Some(gemma4_keys),
    },
    // Qwen3.5-9B's text decoder (24 DeltaNet + 8 gated attention layers),
    // the paper's default pair.
    Shape {
        name: "qwen3.5-9b",
        arch: "Qwen3_5ForCausalLM",
        hidden: 4096,
        intermediate: 12288,
        layers: 32,
        heads: 16,
        kv_heads: 4,
        head_dim: 256,
        vocab: 248_320,
        tied: false,
        rope_theta: 1e7,
        extra: Some(qwen3_5_keys),
    },
    // Qwen 3.5's layer pattern and head ratios at a quarter of the width,
    // for CPU benches (hidden 1024, 24 layers; the full vocabulary).
    Shape {
        name: "qwen3.5-0.6b",
        arch: "Qwen3_5ForCausalLM",
        hidden: 1024,
        intermediate: 3072,
        layers: 24,
        heads: 4,
        kv_heads: 1,
        head_dim: 256,
        vocab: 248_320,
        tied: true,
        rope_theta: 1e7,
        extra: Some(qwen3_5_keys),
    },
    // Gemma 4's blocks scaled down to fit a CPU bench (12 layers, vocab 64k).
    Shape {
        name: "gemma4-0.3b",
        arch: "Gemma4ForCausalLM",
        hidden: 640,
        intermediate: 2560,
        layers: 12,
        heads: 4,
        kv_heads: 1,
        head_dim: 128,
        vocab: 65_536,
        tied: true,
        rope_theta: 1e4,
        extra: Some(gemma4_keys),
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
        if let Some(extra) = self.extra {
            extra(&mut c);
        }
        c
    }

    /// The [`Config`] that loading this shape's `config.json` gives.
    pub fn config(&self, dtype: DType) -> Result<Config> {
        Config::from_json(&self.config_json(dtype), Path::new(self.name))
    }

    /// (name, shape) of every tensor: the description's table.
    pub fn tensors(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let cfg = self.config(DType::BF16)?;
        let table = layout::table(&cfg);
        Ok(table
            .all()
            .into_iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect())
    }

    pub fn num_params(&self) -> Result<usize> {
        Ok(self
            .tensors()?
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum())
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
    for (name, dims) in shape.tensors()? {
        let n: usize = dims.iter().product();
        let vals: Vec<f32> = if name.ends_with("norm.weight") || name.ends_with("layer_scalar") {
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
            extra: None,
        };
        let dir = tempfile::tempdir().unwrap();
        write(&tiny, dir.path(), DType::BF16, 3).unwrap();
        let m = Model::load(dir.path()).unwrap();
        assert_eq!(m.config.vocab_size, 50);
        assert_eq!(m.dtype(), DType::BF16);
        assert_eq!(
            tiny.num_params().unwrap(),
            50 * 32 + 2 * (2 * 32 + 32 * 32 * 2 + 16 * 32 * 2 + 32 + 16 * 2 + 3 * 32 * 64) + 32
        );
        let tok = TokenizerBundle::load(dir.path()).unwrap();
        assert_eq!(tok.encode("<t3> <t49>", false).unwrap(), vec![3, 49]);
    }

    #[test]
    fn every_shape_is_a_valid_description_of_its_real_size() {
        for s in SHAPES {
            let n = s.num_params().unwrap();
            assert!(n > 100_000_000, "{}: {n}", s.name);
        }
        // gemma-4-E4B: ~8B stored parameters, most of them per-layer embeddings.
        let e4b = shape("gemma4-e4b").unwrap().num_params().unwrap() as f64;
        assert!((7.0e9..9.0e9).contains(&e4b), "{e4b}");
        let olmo = shape("olmo3-7b").unwrap().num_params().unwrap() as f64;
        assert!((7.0e9..7.6e9).contains(&olmo), "{olmo}");
        let q35 = shape("qwen3.5-9b").unwrap().num_params().unwrap() as f64;
        // Qwen3.5-9B's language model: 8.95B parameters.
        assert!((8.9e9..9.0e9).contains(&q35), "{q35}");
        let q35s = shape("qwen3.5-0.6b").unwrap().num_params().unwrap() as f64;
        assert!((5.5e8..6.0e8).contains(&q35s), "{q35s}");
    }

    #[test]
    fn synthesized_olmo3_gemma4_and_qwen3_5_checkpoints_load_and_score_finite_values() {
        for (arch, extra) in [
            ("Olmo3ForCausalLM", olmo3_keys as fn(&mut serde_json::Value)),
            ("Gemma4ForCausalLM", gemma4_keys),
            ("Qwen3_5ForCausalLM", qwen3_5_keys),
        ] {
            let tiny = Shape {
                name: "tiny",
                arch,
                hidden: 32,
                intermediate: 64,
                layers: 12,
                heads: 4,
                kv_heads: 2,
                head_dim: 8,
                vocab: 50,
                tied: true,
                rope_theta: 1e4,
                extra: Some(extra),
            };
            let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
            for (i, d) in dirs.iter().enumerate() {
                write(&tiny, d.path(), DType::BF16, i as u64).unwrap();
            }
            let load = |d: &tempfile::TempDir| std::sync::Arc::new(Model::load(d.path()).unwrap());
            // The architecture is named as the config names it.
            assert_eq!(load(&dirs[0]).config.arch_name, arch);
            let mut pair = crate::backend::open_pair(
                crate::backend::Device::Cpu,
                load(&dirs[0]),
                load(&dirs[1]),
            )
            .unwrap();
            let req = crate::backend::SeqRequest {
                token_ids: (0..40).map(|i| (i * 7) % 50).collect(),
                score_mask: None,
            };
            let out = pair.score(&[req]).unwrap();
            assert!(
                out[0].logp_policy[1..].iter().all(|x| x.is_finite()),
                "{arch}"
            );
        }
    }
}
