//! Hugging Face `config.json` → one [`Config`] for the decoder family we run
//! (Llama, Mistral, Qwen2, Qwen3). Unknown keys are ignored; both the older
//! (`rope_theta` + `rope_scaling`) and newer (`rope_parameters`) RoPE styles
//! are read.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// Architectures we can run, keyed by `architectures[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub const SUPPORTED: [(&'static str, Arch); 4] = [
        ("LlamaForCausalLM", Arch::Llama),
        ("MistralForCausalLM", Arch::Mistral),
        ("Qwen2ForCausalLM", Arch::Qwen2),
        ("Qwen3ForCausalLM", Arch::Qwen3),
    ];
    pub fn hf_name(self) -> &'static str {
        Self::SUPPORTED
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.x wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2, or `attention_bias: true`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Per layer: `Some(w)` when the layer attends only to the last `w` keys.
    pub sliding_window: Vec<Option<usize>>,
}

fn get_usize(v: &Value, key: &str, path: &Path) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| Error::config(path, format!("missing or non-integer `{key}`")))
}

fn get_f32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

impl Config {
    /// Read `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&path, format!("invalid JSON: {e}")))?;
        Config::from_json(&v, &path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Config> {
        let supported = || {
            Arch::SUPPORTED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::config(
                    path,
                    format!("missing `architectures[0]`; supported: {}", supported()),
                )
            })?;
        let arch = Arch::SUPPORTED
            .iter()
            .find(|(n, _)| *n == arch_name)
            .map(|(_, a)| *a)
            .ok_or_else(|| Error::UnsupportedArch {
                path: path.to_path_buf(),
                arch: arch_name.to_string(),
                supported: supported(),
            })?;

        let hidden_size = get_usize(v, "hidden_size", path)?;
        let num_heads = get_usize(v, "num_attention_heads", path)?;
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = match v.get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            None => {
                if num_heads == 0 || hidden_size % num_heads != 0 {
                    return Err(Error::config(
                        path,
                        "`hidden_size` is not divisible by `num_attention_heads` and no `head_dim` is given",
                    ));
                }
                hidden_size / num_heads
            }
        };
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "`num_attention_heads` ({num_heads}) must be a multiple of `num_key_value_heads` ({num_kv_heads})"
                ),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(Error::config(path, "`head_dim` must be even for RoPE"));
        }
        let num_layers = get_usize(v, "num_hidden_layers", path)?;

        // RoPE: newer configs nest everything under `rope_parameters`.
        let rope_params = v
            .get("rope_parameters")
            .filter(|p| p.is_object())
            .or_else(|| v.get("rope_scaling").filter(|p| p.is_object()));
        let rope_theta = rope_params
            .and_then(|p| get_f32(p, "rope_theta"))
            .or_else(|| get_f32(v, "rope_theta"))
            .unwrap_or(10000.0);
        let rope_scaling = match rope_params {
            None => RopeScaling::None,
            Some(p) => {
                let kind = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let factor = || {
                    get_f32(p, "factor").ok_or_else(|| {
                        Error::config(path, format!("rope scaling `{kind}` needs `factor`"))
                    })
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: factor()? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: factor()?,
                        low_freq_factor: get_f32(p, "low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: get_f32(p, "high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: get_f32(
                            p,
                            "original_max_position_embeddings",
                        )
                        .ok_or_else(|| {
                            Error::config(
                                path,
                                "rope scaling `llama3` needs `original_max_position_embeddings`",
                            )
                        })?,
                    },
                    other => {
                        return Err(Error::config(
                            path,
                            format!(
                                "unsupported rope scaling type `{other}`; supported: default, linear, llama3"
                            ),
                        ));
                    }
                }
            }
        };

        let window = v
            .get("sliding_window")
            .and_then(Value::as_u64)
            .map(|w| w as usize);
        let layer_types: Option<Vec<String>> = v.get("layer_types").and_then(|lt| {
            lt.as_array().map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or("").to_string())
                    .collect()
            })
        });
        let sliding_window = match (&layer_types, arch) {
            (Some(types), _) => {
                if types.len() != num_layers {
                    return Err(Error::config(
                        path,
                        format!(
                            "`layer_types` has {} entries but `num_hidden_layers` is {num_layers}",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .map(|t| {
                        if t == "sliding_attention" {
                            window
                        } else {
                            None
                        }
                    })
                    .collect()
            }
            (None, Arch::Mistral) => vec![window; num_layers],
            (None, Arch::Qwen2 | Arch::Qwen3) => {
                let on = v
                    .get("use_sliding_window")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let max_window_layers = v
                    .get("max_window_layers")
                    .and_then(Value::as_u64)
                    .unwrap_or(num_layers as u64) as usize;
                (0..num_layers)
                    .map(|i| {
                        if on && i >= max_window_layers {
                            window
                        } else {
                            None
                        }
                    })
                    .collect()
            }
            (None, Arch::Llama) => vec![None; num_layers],
        };

        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Config {
            arch,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", path)?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: get_usize(v, "vocab_size", path)?,
            rms_norm_eps: get_f32(v, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            qk_norm: arch == Arch::Qwen3,
            sliding_window,
        })
    }

    /// RoPE inverse frequencies, computed as transformers does (f32 at the end,
    /// llama3 smoothing in f32 arithmetic).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f32> = (0..d / 2)
            .map(|i| {
                // transformers: 1.0 / (base ** (arange(0, dim, 2, dtype=int64).float() / dim))
                let exponent = (2 * i) as f32 / d as f32;
                1.0 / self.rope_theta.powf(exponent)
            })
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Multiply-adds of one token's forward through all layers (excluding
    /// attention scores, which grow with context) plus the LM head.
    pub fn flops_per_token(&self, with_lm_head: bool) -> f64 {
        let h = self.hidden_size as f64;
        let q = (self.num_heads * self.head_dim) as f64;
        let kv = (self.num_kv_heads * self.head_dim) as f64;
        let i = self.intermediate_size as f64;
        let per_layer = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
        let head = if with_lm_head {
            h * self.vocab_size as f64
        } else {
            0.0
        };
        2.0 * (per_layer * self.num_layers as f64 + head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn old_and_new_rope_config_styles_give_the_same_config() {
        let old = parse(
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        )
        .unwrap();
        let new = parse(
            json!({"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}}),
        )
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(old.head_dim, 16);
        let plain = parse(json!({"rope_theta": 5e5})).unwrap();
        for (a, b) in old.rope_inv_freq().iter().zip(plain.rope_inv_freq()) {
            assert_eq!(*a, b / 4.0);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let c = parse(json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}))
        .unwrap();
        let plain = parse(json!({"rope_theta": 5e5})).unwrap();
        let (s, p) = (c.rope_inv_freq(), plain.rope_inv_freq());
        assert_eq!(s[0], p[0], "highest frequency unchanged");
        assert_eq!(
            *s.last().unwrap(),
            p.last().unwrap() / 8.0,
            "lowest frequency divided by factor"
        );
    }

    #[test]
    fn sliding_windows_follow_layer_types_then_the_architecture_defaults() {
        let c = parse(
            json!({"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}),
        )
        .unwrap();
        assert_eq!(c.sliding_window, vec![Some(8), None]);
        let mut v = base(json!({"sliding_window": 8}));
        v["architectures"] = json!(["MistralForCausalLM"]);
        let m = Config::from_json(&v, Path::new("c")).unwrap();
        assert_eq!(m.sliding_window, vec![Some(8), Some(8)]);
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        let q = Config::from_json(&v, Path::new("c")).unwrap();
        assert_eq!(
            q.sliding_window,
            vec![None, None],
            "Qwen2 needs use_sliding_window"
        );
        assert!(q.qkv_bias);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = parse(json!({"num_key_value_heads": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = parse(json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
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
}
