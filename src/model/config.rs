//! The model description: what one checkpoint computes, read from its
//! `config.json` by the family file of its architecture ([`super::family`]).
//!
//! A [`Config`] lists every layer with its token mixer ([`Mixer`]: softmax
//! attention, [`AttnDesc`]: heads, head dim, window, RoPE, q/k/v norms, bias,
//! scale, output gate, K/V shared from an earlier layer; or gated-DeltaNet
//! linear attention, [`DeltaNetDesc`]), its MLP ([`MlpDesc`]), which of the
//! four norm slots it has
//! ([`Norms`]: pre-norm, post-norm and sandwich blocks are combinations of
//! them), and the per-layer extras (per-layer embedding input, a layer
//! scalar); plus the embedding (scale, per-layer embeddings), the final norm
//! and the LM head (tied, logit soft-cap), and how RMSNorm weights apply
//! ([`NormKind`]). Both backends run the layer loop
//! from it, the tensor table ([`super::layout`]) names the weights from it,
//! and `padv synth` writes checkpoints from it.
//!
//! Families read only the keys they understand; a key that would change the
//! computation in a way padv does not implement is an error naming it
//! ([`Keys::reject`]), never silently ignored.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::family;
use crate::{Error, Result};

/// Architectures we can run, keyed by `architectures[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Olmo3,
    Gemma4,
    Qwen3_5,
}

impl Arch {
    /// The first `architectures[0]` name of this family (a loaded config
    /// keeps its own in [`Config::arch_name`]).
    pub fn hf_name(self) -> &'static str {
        family::SUPPORTED
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Whether the CUDA backend's parity with the CPU and transformers has
    /// passed on a GPU for this family (docs/gpu-results.md): `--device auto`
    /// takes the GPU only for these. Gemma 4 the CUDA backend runs when asked
    /// by name, not yet verified on a device.
    pub fn gpu_verified(self) -> bool {
        matches!(
            self,
            Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 | Arch::Olmo3 | Arch::Qwen3_5
        )
    }
}

/// Activation of the gated MLP: `act(gate(x)) · up(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// SiLU (SwiGLU).
    Silu,
    /// GELU, tanh approximation (GeGLU; `gelu_pytorch_tanh`).
    GeluTanh,
}

/// RMSNorm over the q or k projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Per head, weight `[head_dim]` (Qwen3, Gemma 4).
    PerHead,
    /// Over the whole projection (all heads jointly), weight `[heads · head_dim]` (Olmo 2/3).
    FullWidth,
}

/// Rotary embedding of one attention layer: the first `rotary_dim` dims of
/// each head are rotated (rotate-half inside them) by `inv_freq`
/// (`rotary_dim / 2` frequencies, zeros allowed), and cos/sin are multiplied
/// by `attention_factor` (YaRN's mscale, 1 otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub rotary_dim: usize,
    pub attention_factor: f32,
}

/// One attention mixer.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnDesc {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `Some(w)`: query `i` sees keys `j` with `i − w < j ≤ i`.
    pub window: Option<usize>,
    pub rope: Rope,
    pub qk_norm: QkNorm,
    /// Weightless RMSNorm over each head of v (Gemma 4).
    pub v_norm: bool,
    /// q/k/v projections carry a bias.
    pub bias: bool,
    /// Softmax scale of the scores (1/√head_dim unless the family says so).
    pub scale: f32,
    /// K/V are not computed here but read from this earlier layer's (after
    /// its norms and RoPE): Gemma's KV sharing. Such a layer has no k/v
    /// projections and no cache of its own.
    pub kv_from: Option<usize>,
    /// `q_proj` gives, per head, the query and an output gate
    /// (`[query (head_dim) | gate (head_dim)]`); the attention output is
    /// multiplied by `sigmoid(gate)` before `o_proj` (Qwen 3.5).
    pub output_gate: bool,
}

impl AttnDesc {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

pub use crate::consts::DN_CHUNK as DELTANET_CHUNK;

/// Gated DeltaNet linear attention (Qwen3-Next, Qwen 3.5): `in_proj_qkv`
/// → channels `[q | k | v]`, a causal depthwise convolution of
/// `conv_kernel` taps and SiLU over them; q and k L2-normalised per head, q
/// scaled by `1/√k_head_dim`; `β = sigmoid(in_proj_b x)`, `g = −exp(A_log) ·
/// softplus(in_proj_a x + dt_bias)`; per value head the recurrence
/// `S ← e^g S; S ← S + k (β (v − Sᵀk))ᵀ; o = Sᵀq` over an f32 state
/// `[k_head_dim, v_head_dim]`, value head `j` reading key head
/// `j / (v_heads / k_heads)`; then a plain-weight RMSNorm of `o` per value
/// head times `silu(in_proj_z x)`. The output projection is `out_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetDesc {
    pub num_k_heads: usize,
    pub num_v_heads: usize,
    pub k_head_dim: usize,
    pub v_head_dim: usize,
    pub conv_kernel: usize,
}

impl DeltaNetDesc {
    /// Width of q (and of k): `k_heads · k_head_dim`.
    pub fn key_dim(&self) -> usize {
        self.num_k_heads * self.k_head_dim
    }
    /// Width of v and of the output: `v_heads · v_head_dim`.
    pub fn value_dim(&self) -> usize {
        self.num_v_heads * self.v_head_dim
    }
    /// Channels of the convolution: `[q | k | v]`.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
    /// Floats of the recurrent state of one sequence: `[v_heads, k_head_dim, v_head_dim]`.
    pub fn state_floats(&self) -> usize {
        self.num_v_heads * self.k_head_dim * self.v_head_dim
    }
    /// Floats of the convolution's input tail of one sequence: the last
    /// `conv_kernel − 1` rows of `[q | k | v]` before the convolution.
    pub fn conv_tail_floats(&self) -> usize {
        self.conv_kernel.saturating_sub(1) * self.conv_dim()
    }
}

/// The token mixer of one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Mixer {
    /// Causal softmax attention with a K/V cache.
    Attention(AttnDesc),
    /// Gated DeltaNet: linear attention with a fixed-size recurrent state.
    GatedDeltaNet(DeltaNetDesc),
}

/// How a stored RMSNorm weight `w` scales the normalised values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `x̂ · w` (Llama, Olmo, Gemma 4).
    Weight,
    /// `x̂ · (1 + w)`, computed in f32 (zero-centred weights: Qwen 3.5's
    /// layer, final and q/k norms; the DeltaNet's gated output norm stays
    /// plain).
    OnePlusWeight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpDesc {
    pub intermediate: usize,
    pub act: Act,
}

/// Which norms a block has. `x += attn_out(attn(attn_in(x)))`, then
/// `x += mlp_out(mlp(mlp_in(x)))`, each norm present or the identity:
/// pre-norm blocks (Llama) have the two `_in`, post-norm blocks (Olmo 3) the
/// two `_out`, sandwich blocks (Gemma) all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Norms {
    pub attn_in: bool,
    pub attn_out: bool,
    pub mlp_in: bool,
    pub mlp_out: bool,
}

impl Norms {
    pub const PRE: Norms = Norms {
        attn_in: true,
        attn_out: false,
        mlp_in: true,
        mlp_out: false,
    };
    pub const POST: Norms = Norms {
        attn_in: false,
        attn_out: true,
        mlp_in: false,
        mlp_out: true,
    };
    pub const SANDWICH: Norms = Norms {
        attn_in: true,
        attn_out: true,
        mlp_in: true,
        mlp_out: true,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerDesc {
    pub mixer: Mixer,
    pub mlp: MlpDesc,
    pub norms: Norms,
    /// After the MLP: `x += norm(proj(act(gate(x)) ⊙ P[l]))` with the
    /// per-layer input `P[l]` ([`PerLayerEmbed`]).
    pub per_layer_input: bool,
    /// At the end of the layer `x *= s` with a stored scalar.
    pub layer_scalar: bool,
}

impl LayerDesc {
    /// The attention mixer, when the layer has one.
    pub fn attn(&self) -> Option<&AttnDesc> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::GatedDeltaNet(_) => None,
        }
    }

    /// The DeltaNet mixer, when the layer has one.
    pub fn deltanet(&self) -> Option<&DeltaNetDesc> {
        match &self.mixer {
            Mixer::GatedDeltaNet(d) => Some(d),
            Mixer::Attention(_) => None,
        }
    }

    /// Width of the mixer's output before its output projection.
    pub fn mixer_out_dim(&self) -> usize {
        match &self.mixer {
            Mixer::Attention(a) => a.q_dim(),
            Mixer::GatedDeltaNet(d) => d.value_dim(),
        }
    }
}

/// Gemma's per-layer embeddings: for every token, `P = (norm(e·W_projᵀ ·
/// proj_scale) + E_ple[x] · embed_scale) · combine_scale`, `[layers, dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerLayerEmbed {
    pub dim: usize,
    pub vocab: usize,
    /// Multiplies the per-layer table's rows (√dim, rounded to the weight dtype).
    pub embed_scale: f32,
    /// Multiplies the projection of the main embedding (1/√hidden).
    pub proj_scale: f32,
    /// Multiplies the sum (1/√2).
    pub combine_scale: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbedDesc {
    /// Multiplies the embedding rows (Gemma: √hidden rounded to the weight dtype).
    pub scale: Option<f32>,
    pub per_layer: Option<PerLayerEmbed>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    /// `architectures[0]` of the config (one of [`family::SUPPORTED`]).
    pub arch_name: &'static str,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub rms_norm_eps: f32,
    /// How the weights of the layer, final and q/k norms apply.
    pub norm: NormKind,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Name prefix of the decoder's tensors: `model.`, or
    /// `model.language_model.` in multimodal wrappers.
    pub prefix: String,
    /// Name prefixes of stored parts a scorer does not run (vision and audio
    /// towers, multi-token-prediction heads).
    pub ignored: Vec<String>,
    pub embed: EmbedDesc,
    pub layers: Vec<LayerDesc>,
    /// Final logits are `cap · tanh(z / cap)`.
    pub final_logit_softcap: Option<f32>,
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

    /// Describe the model of a parsed `config.json` (`path` names it in errors).
    pub fn from_json(v: &Value, path: &Path) -> Result<Config> {
        let cfg = family::describe(v, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The first way `other` describes another network than `self`, named
    /// as in config.json (`None` when they match): what a merge needs equal,
    /// since the merged reference runs the reference's network. The
    /// vocabulary size and the context length may differ.
    pub fn network_difference(&self, other: &Config) -> Option<String> {
        let (a, b) = (self, other);
        differ("architecture", &a.arch, &b.arch)
            .or_else(|| differ("hidden_size", &a.hidden_size, &b.hidden_size))
            .or_else(|| differ("num_hidden_layers", &a.num_layers, &b.num_layers))
            .or_else(|| differ("rms_norm_eps", &a.rms_norm_eps, &b.rms_norm_eps))
            .or_else(|| {
                differ(
                    "tie_word_embeddings",
                    &a.tie_word_embeddings,
                    &b.tie_word_embeddings,
                )
            })
            .or_else(|| {
                differ(
                    "final_logit_softcapping",
                    &a.final_logit_softcap,
                    &b.final_logit_softcap,
                )
            })
            .or_else(|| differ("norm", &a.norm, &b.norm))
            .or_else(|| differ("embedding", &a.embed, &b.embed))
            .or_else(|| {
                (a.layers.iter().zip(&b.layers).enumerate()).find_map(|(i, (x, y))| {
                    layer_difference(x, y).map(|d| format!("layer {i}: {d}"))
                })
            })
    }

    /// Geometry the layer loop relies on: head counts, RoPE widths, K/V
    /// sharing sources, finite eps and soft-cap.
    fn validate(&self, path: &Path) -> Result<()> {
        let err = |m: String| Err(Error::config(path, m));
        if self.layers.len() != self.num_layers || self.num_layers == 0 {
            return err(format!(
                "{} layers described for `num_hidden_layers` {}",
                self.layers.len(),
                self.num_layers
            ));
        }
        if self.hidden_size == 0 || self.vocab_size == 0 {
            return err("`hidden_size` and `vocab_size` must be positive".into());
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.mlp.intermediate == 0 {
                return err(format!("layer {i}: `intermediate_size` must be positive"));
            }
            let a = match &l.mixer {
                Mixer::Attention(a) => a,
                Mixer::GatedDeltaNet(d) => {
                    if d.num_k_heads == 0
                        || d.num_v_heads % d.num_k_heads != 0
                        || d.num_v_heads == 0
                    {
                        return err(format!(
                            "layer {i}: `linear_num_value_heads` ({}) must be a positive multiple of `linear_num_key_heads` ({})",
                            d.num_v_heads, d.num_k_heads
                        ));
                    }
                    if d.k_head_dim == 0 || d.v_head_dim == 0 || d.conv_kernel == 0 {
                        return err(format!(
                            "layer {i}: linear attention head dims and `linear_conv_kernel_dim` must be positive"
                        ));
                    }
                    continue;
                }
            };
            if a.num_heads == 0 || a.num_kv_heads == 0 || a.num_heads % a.num_kv_heads != 0 {
                return err(format!(
                    "layer {i}: `num_attention_heads` ({}) must be a positive multiple of `num_key_value_heads` ({})",
                    a.num_heads, a.num_kv_heads
                ));
            }
            if a.head_dim == 0 || a.rope.rotary_dim % 2 != 0 || a.rope.rotary_dim > a.head_dim {
                return err(format!(
                    "layer {i}: head_dim {} with {} rotary dims: RoPE needs an even count ≤ head_dim",
                    a.head_dim, a.rope.rotary_dim
                ));
            }
            if a.window == Some(0) {
                return err(format!(
                    "layer {i}: `sliding_window` is 0; a window holds at least the token itself"
                ));
            }
            if a.rope.inv_freq.iter().any(|f| !f.is_finite()) {
                return err(format!(
                    "layer {i}: RoPE frequencies are not finite (check `rope_theta` and the scaling)"
                ));
            }
            if let Some(src) = a.kv_from {
                let shareable = self.layers[src.min(i)].attn().is_some_and(|s| {
                    s.kv_from.is_none() && s.kv_dim() == a.kv_dim() && s.window == a.window
                });
                if src >= i || !shareable {
                    return err(format!("layer {i}: cannot share the K/V of layer {src}"));
                }
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return err(format!(
                "`rms_norm_eps` must be a finite number ≥ 0, not {}",
                self.rms_norm_eps
            ));
        }
        if let Some(c) = self.final_logit_softcap
            && !(c.is_finite() && c > 0.0)
        {
            return err(format!(
                "`final_logit_softcapping` must be positive, not {c}"
            ));
        }
        Ok(())
    }

    /// `model.norm.weight` and friends: the decoder's tensor named `name`.
    pub fn tensor(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Multiply-adds of one token's forward through all layers (excluding
    /// attention scores, which grow with context) plus the LM head, ×2.
    pub fn flops_per_token(&self, with_lm_head: bool) -> f64 {
        let h = self.hidden_size as f64;
        let per_layer: f64 = self
            .layers
            .iter()
            .map(|l| {
                let ple = self.embed.per_layer.as_ref().filter(|_| l.per_layer_input);
                let ple = ple.map_or(0.0, |p| 2.0 * h * p.dim as f64);
                let mlp = 3.0 * h * l.mlp.intermediate as f64;
                let mixer = match &l.mixer {
                    Mixer::Attention(a) => {
                        let gate = if a.output_gate { 2.0 } else { 1.0 };
                        let (q, kv) = (a.q_dim() as f64, a.kv_dim() as f64);
                        let kv_proj = if a.kv_from.is_some() { 0.0 } else { 2.0 * kv };
                        h * (gate * q + kv_proj) + q * h
                    }
                    Mixer::GatedDeltaNet(d) => {
                        let (dk, dv) = (d.k_head_dim as f64, d.v_head_dim as f64);
                        let (conv, val) = (d.conv_dim() as f64, d.value_dim() as f64);
                        // Projections in and out, the convolution, and per
                        // value head the chunked rule's state products
                        // (3·dk·dv) and intra-chunk products.
                        let proj = h * (conv + val + 2.0 * d.num_v_heads as f64) + val * h;
                        let c = DELTANET_CHUNK as f64;
                        let rule = d.num_v_heads as f64 * (3.0 * dk * dv + c * (dk + dv));
                        proj + d.conv_kernel as f64 * conv + rule
                    }
                };
                mixer + mlp + ple
            })
            .sum();
        let head = if with_lm_head {
            h * self.vocab_size as f64
        } else {
            0.0
        };
        2.0 * (per_layer + head)
    }

    /// Multiply-adds of one query's attention over `context` keys, ×2, summed
    /// over the attention layers (windows respected; linear attention costs
    /// the same at any context and is counted in [`Config::flops_per_token`]).
    pub fn attention_flops(&self, context: usize) -> f64 {
        self.layers
            .iter()
            .filter_map(LayerDesc::attn)
            .map(|a| {
                let keys = a.window.map_or(context, |w| w.min(context));
                4.0 * (a.q_dim() * keys) as f64
            })
            .sum()
    }

    /// Heads and K/V heads of the first attention layer (`(0, 0)` without one).
    pub fn attention_heads(&self) -> (usize, usize) {
        self.layers
            .iter()
            .find_map(LayerDesc::attn)
            .map_or((0, 0), |a| (a.num_heads, a.num_kv_heads))
    }

    /// Whether some layer is a recurrent (linear-attention) mixer.
    pub fn is_hybrid(&self) -> bool {
        self.layers.iter().any(|l| l.deltanet().is_some())
    }
}

/// Typed access to a config object's keys, with errors naming the file and
/// the key.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    pub v: &'a Value,
    pub path: &'a Path,
}

impl<'a> Keys<'a> {
    pub fn new(v: &'a Value, path: &'a Path) -> Keys<'a> {
        Keys { v, path }
    }

    /// The same file, reading a nested object (e.g. `text_config`).
    pub fn nested(&self, key: &str) -> Option<Keys<'a>> {
        self.v
            .get(key)
            .filter(|x| x.is_object())
            .map(|v| Keys { v, path: self.path })
    }

    /// An object-valued key (`None` when absent or null); any other value is
    /// an error naming the key, never silently ignored.
    pub fn object(&self, key: &str) -> Result<Option<&'a Value>> {
        match self.get(key) {
            Some(x) if !x.is_object() => {
                Err(self.err(format!("`{key}` must be an object, not {x}")))
            }
            x => Ok(x),
        }
    }

    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::config(PathBuf::from(self.path), msg)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing `{key}`")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, not {x}"))
            }),
        }
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .map(|n| Some(n as f32))
                .ok_or_else(|| self.err(format!("`{key}` must be a number, not {x}"))),
        }
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        Ok(self.opt_f32(key)?.unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, not {x}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a string, not {x}"))),
        }
    }

    /// Refuse a key whose value changes the computation in a way padv does not
    /// implement: absent, null, or one of `accepted` is fine.
    pub fn reject(&self, key: &str, accepted: &[Value], what: &str) -> Result<()> {
        match self.get(key) {
            Some(x) if !accepted.contains(x) => Err(self.err(format!(
                "`{key}: {x}` is not supported ({what}); padv would compute a different model"
            ))),
            _ => Ok(()),
        }
    }

    /// `layer_types`, checked against the layer count; every entry must be
    /// one of `known`.
    pub fn layer_types(&self, num_layers: usize, known: &[&str]) -> Result<Option<Vec<String>>> {
        let Some(lt) = self.get("layer_types") else {
            return Ok(None);
        };
        let arr = lt
            .as_array()
            .ok_or_else(|| self.err("`layer_types` must be a list of strings"))?;
        if arr.len() != num_layers {
            return Err(self.err(format!(
                "`layer_types` has {} entries but `num_hidden_layers` is {num_layers}",
                arr.len()
            )));
        }
        arr.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some(s) if known.contains(&s) => Ok(s.to_string()),
                _ => Err(self.err(format!(
                    "`layer_types[{i}]` is {t}; this architecture knows {}",
                    known.join(", ")
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// `what: A against B` when the two differ.
fn differ<T: PartialEq + std::fmt::Debug>(what: &str, a: &T, b: &T) -> Option<String> {
    (a != b).then(|| format!("{what} {a:?} against {b:?}"))
}

fn layer_difference(a: &LayerDesc, b: &LayerDesc) -> Option<String> {
    let mixer = match (&a.mixer, &b.mixer) {
        (Mixer::Attention(x), Mixer::Attention(y)) => {
            differ("num_attention_heads", &x.num_heads, &y.num_heads)
                .or_else(|| differ("num_key_value_heads", &x.num_kv_heads, &y.num_kv_heads))
                .or_else(|| differ("head_dim", &x.head_dim, &y.head_dim))
                .or_else(|| differ("sliding_window", &x.window, &y.window))
                .or_else(|| {
                    (x.rope != y.rope).then(|| {
                        "RoPE (`rope_theta`, its scaling or the rotary fraction) differs"
                            .to_string()
                    })
                })
                .or_else(|| differ("q/k norm", &x.qk_norm, &y.qk_norm))
                .or_else(|| differ("attention bias", &x.bias, &y.bias))
                .or_else(|| differ("attention scale", &x.scale, &y.scale))
                .or_else(|| differ("K/V shared from layer", &x.kv_from, &y.kv_from))
                .or_else(|| differ("v norm", &x.v_norm, &y.v_norm))
                .or_else(|| differ("attention output gate", &x.output_gate, &y.output_gate))
        }
        (Mixer::GatedDeltaNet(x), Mixer::GatedDeltaNet(y)) => differ("linear attention", x, y),
        _ => Some("attention against linear attention (`layer_types`)".to_string()),
    };
    mixer
        .or_else(|| {
            differ(
                "intermediate_size",
                &a.mlp.intermediate,
                &b.mlp.intermediate,
            )
        })
        .or_else(|| differ("hidden_act", &a.mlp.act, &b.mlp.act))
        .or_else(|| differ("norms", &a.norms, &b.norms))
        .or_else(|| differ("per-layer input", &a.per_layer_input, &b.per_layer_input))
        .or_else(|| differ("layer scalar", &a.layer_scalar, &b.layer_scalar))
}
