//! The tensor table of a model description: every weight a [`Config`]
//! implies, with its Hugging Face name and shape. Loading binds it to the
//! mapped checkpoint ([`DecoderWeights::bind`], the first missing or
//! mis-shaped tensor named), validation compares it with what the file
//! holds (tensors nobody reads are an error, except in the parts a family
//! declares ignored), and `padv synth` writes checkpoints from it.
//!
//! Names are the ones transformers uses for every family here
//! (`self_attn.q_proj`, `linear_attn.in_proj_qkv`, `mlp.gate_proj`,
//! `input_layernorm`, …); a layer's mixer tensors follow its mixer kind
//! ([`MixerParts`]), and which norm sits in which slot depends on the block
//! ([`Norms`]).

use super::config::{AttnDesc, Config, DeltaNetDesc, LayerDesc, Mixer, Norms, QkNorm};
use super::weights::{Tensor, Weights};
use crate::{Error, Result};

/// One entry of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The tensors of a softmax-attention mixer.
#[derive(Debug, Clone)]
pub struct AttnParts<T> {
    /// `[q_dim, hidden]`, or `[2 · q_dim, hidden]` with an output gate.
    pub q: T,
    /// `None` when the layer reads another layer's K/V.
    pub k: Option<T>,
    pub v: Option<T>,
    pub q_bias: Option<T>,
    pub k_bias: Option<T>,
    pub v_bias: Option<T>,
    pub q_norm: Option<T>,
    pub k_norm: Option<T>,
    pub o: T,
}

/// The tensors of a gated-DeltaNet mixer (`linear_attn.*`).
#[derive(Debug, Clone)]
pub struct DeltaNetParts<T> {
    /// `[conv_dim, hidden]`: channels `[q | k | v]`.
    pub in_qkv: T,
    /// `[value_dim, hidden]`: the output gate.
    pub in_z: T,
    /// `[v_heads, hidden]`: β before its sigmoid.
    pub in_b: T,
    /// `[v_heads, hidden]`: the decay's input.
    pub in_a: T,
    /// `[conv_dim, 1, kernel]`: depthwise causal convolution.
    pub conv: T,
    /// `[v_heads]`
    pub a_log: T,
    /// `[v_heads]`
    pub dt_bias: T,
    /// `[v_head_dim]`: the gated output norm (plain weight).
    pub norm: T,
    /// `[hidden, value_dim]`
    pub out: T,
}

/// The tensors of a layer's token mixer.
#[derive(Debug, Clone)]
pub enum MixerParts<T> {
    Attention(AttnParts<T>),
    DeltaNet(DeltaNetParts<T>),
}

/// The tensors of one decoder layer (`T`: a [`Spec`] or a bound [`Tensor`]).
/// The `attn_*` norm slots belong to the mixer, whichever kind it is.
#[derive(Debug, Clone)]
pub struct LayerParts<T> {
    pub attn_in_norm: Option<T>,
    pub mixer: MixerParts<T>,
    pub attn_out_norm: Option<T>,
    pub mlp_in_norm: Option<T>,
    pub gate: T,
    pub up: T,
    pub down: T,
    pub mlp_out_norm: Option<T>,
    /// Per-layer input: `[dim, hidden]` gate, `[hidden, dim]` projection, `[hidden]` norm.
    pub ple_gate: Option<T>,
    pub ple_proj: Option<T>,
    pub ple_norm: Option<T>,
    /// `[1]`
    pub layer_scalar: Option<T>,
}

/// All tensors of a decoder.
#[derive(Debug, Clone)]
pub struct DecoderParts<T> {
    pub embed: T,
    /// Per-layer embeddings: `[ple_vocab, layers · dim]` table,
    /// `[layers · dim, hidden]` projection, `[dim]` norm.
    pub ple_embed: Option<T>,
    pub ple_proj: Option<T>,
    pub ple_norm: Option<T>,
    pub layers: Vec<LayerParts<T>>,
    pub final_norm: T,
    /// `lm_head.weight`, or the embedding when tied.
    pub lm_head: T,
}

pub type DecoderWeights<'a> = DecoderParts<Tensor<'a>>;
pub type LayerWeights<'a> = LayerParts<Tensor<'a>>;
pub type AttnWeights<'a> = AttnParts<Tensor<'a>>;
pub type DeltaNetWeights<'a> = DeltaNetParts<Tensor<'a>>;

fn opt<T, U>(x: Option<T>, f: &mut impl FnMut(T) -> Result<U>) -> Result<Option<U>> {
    x.map(f).transpose()
}

impl<T> MixerParts<T> {
    fn try_map<U>(self, f: &mut impl FnMut(T) -> Result<U>) -> Result<MixerParts<U>> {
        Ok(match self {
            MixerParts::Attention(a) => MixerParts::Attention(AttnParts {
                q: f(a.q)?,
                k: opt(a.k, f)?,
                v: opt(a.v, f)?,
                q_bias: opt(a.q_bias, f)?,
                k_bias: opt(a.k_bias, f)?,
                v_bias: opt(a.v_bias, f)?,
                q_norm: opt(a.q_norm, f)?,
                k_norm: opt(a.k_norm, f)?,
                o: f(a.o)?,
            }),
            MixerParts::DeltaNet(d) => MixerParts::DeltaNet(DeltaNetParts {
                in_qkv: f(d.in_qkv)?,
                in_z: f(d.in_z)?,
                in_b: f(d.in_b)?,
                in_a: f(d.in_a)?,
                conv: f(d.conv)?,
                a_log: f(d.a_log)?,
                dt_bias: f(d.dt_bias)?,
                norm: f(d.norm)?,
                out: f(d.out)?,
            }),
        })
    }

    /// The output projection (`o_proj` or `out_proj`).
    pub fn out(&self) -> &T {
        match self {
            MixerParts::Attention(a) => &a.o,
            MixerParts::DeltaNet(d) => &d.out,
        }
    }

    /// Every present tensor, in a fixed order.
    pub fn all(&self) -> Vec<&T> {
        match self {
            MixerParts::Attention(a) => {
                let mut v = vec![&a.q, &a.o];
                v.extend(
                    [
                        &a.k, &a.v, &a.q_bias, &a.k_bias, &a.v_bias, &a.q_norm, &a.k_norm,
                    ]
                    .into_iter()
                    .flatten(),
                );
                v
            }
            MixerParts::DeltaNet(d) => vec![
                &d.in_qkv, &d.in_z, &d.in_b, &d.in_a, &d.conv, &d.a_log, &d.dt_bias, &d.norm,
                &d.out,
            ],
        }
    }
}

impl<T> LayerParts<T> {
    fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<LayerParts<U>> {
        let f = &mut f;
        Ok(LayerParts {
            attn_in_norm: opt(self.attn_in_norm, f)?,
            mixer: self.mixer.try_map(f)?,
            attn_out_norm: opt(self.attn_out_norm, f)?,
            mlp_in_norm: opt(self.mlp_in_norm, f)?,
            gate: f(self.gate)?,
            up: f(self.up)?,
            down: f(self.down)?,
            mlp_out_norm: opt(self.mlp_out_norm, f)?,
            ple_gate: opt(self.ple_gate, f)?,
            ple_proj: opt(self.ple_proj, f)?,
            ple_norm: opt(self.ple_norm, f)?,
            layer_scalar: opt(self.layer_scalar, f)?,
        })
    }

    /// Every present tensor, in a fixed order.
    pub fn all(&self) -> Vec<&T> {
        let opt = [
            &self.attn_in_norm,
            &self.attn_out_norm,
            &self.mlp_in_norm,
            &self.mlp_out_norm,
            &self.ple_gate,
            &self.ple_proj,
            &self.ple_norm,
            &self.layer_scalar,
        ];
        let mut v = self.mixer.all();
        v.extend([&self.gate, &self.up, &self.down]);
        v.extend(opt.into_iter().flatten());
        v
    }
}

impl<T> DecoderParts<T> {
    pub fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<DecoderParts<U>> {
        Ok(DecoderParts {
            embed: f(self.embed)?,
            ple_embed: self.ple_embed.map(&mut f).transpose()?,
            ple_proj: self.ple_proj.map(&mut f).transpose()?,
            ple_norm: self.ple_norm.map(&mut f).transpose()?,
            layers: self
                .layers
                .into_iter()
                .map(|l| l.try_map(&mut f))
                .collect::<Result<_>>()?,
            final_norm: f(self.final_norm)?,
            lm_head: f(self.lm_head)?,
        })
    }

    /// Every tensor, each once (a tied head is the embedding).
    pub fn all(&self) -> Vec<&T> {
        let mut v = vec![&self.embed, &self.final_norm, &self.lm_head];
        v.extend(
            [&self.ple_embed, &self.ple_proj, &self.ple_norm]
                .into_iter()
                .flatten(),
        );
        for l in &self.layers {
            v.extend(l.all());
        }
        v
    }
}

fn attn_table(a: &AttnDesc, h: usize, s: &impl Fn(&str, Vec<usize>) -> Spec) -> AttnParts<Spec> {
    let (qd, kvd) = (a.q_dim(), a.kv_dim());
    let when = |on: bool, n: &str, shape: Vec<usize>| on.then(|| s(n, shape));
    let own_kv = a.kv_from.is_none();
    let (qn, kn) = match a.qk_norm {
        QkNorm::None => (None, None),
        QkNorm::PerHead => (Some(a.head_dim), Some(a.head_dim)),
        QkNorm::FullWidth => (Some(qd), Some(kvd)),
    };
    let q_rows = if a.output_gate { 2 * qd } else { qd };
    AttnParts {
        q: s("self_attn.q_proj.weight", vec![q_rows, h]),
        k: when(own_kv, "self_attn.k_proj.weight", vec![kvd, h]),
        v: when(own_kv, "self_attn.v_proj.weight", vec![kvd, h]),
        q_bias: when(a.bias, "self_attn.q_proj.bias", vec![q_rows]),
        k_bias: when(a.bias && own_kv, "self_attn.k_proj.bias", vec![kvd]),
        v_bias: when(a.bias && own_kv, "self_attn.v_proj.bias", vec![kvd]),
        q_norm: qn.map(|d| s("self_attn.q_norm.weight", vec![d])),
        k_norm: kn
            .filter(|_| own_kv)
            .map(|d| s("self_attn.k_norm.weight", vec![d])),
        o: s("self_attn.o_proj.weight", vec![h, qd]),
    }
}

fn deltanet_table(
    d: &DeltaNetDesc,
    h: usize,
    s: &impl Fn(&str, Vec<usize>) -> Spec,
) -> DeltaNetParts<Spec> {
    let (conv, val, vh) = (d.conv_dim(), d.value_dim(), d.num_v_heads);
    DeltaNetParts {
        in_qkv: s("linear_attn.in_proj_qkv.weight", vec![conv, h]),
        in_z: s("linear_attn.in_proj_z.weight", vec![val, h]),
        in_b: s("linear_attn.in_proj_b.weight", vec![vh, h]),
        in_a: s("linear_attn.in_proj_a.weight", vec![vh, h]),
        conv: s("linear_attn.conv1d.weight", vec![conv, 1, d.conv_kernel]),
        a_log: s("linear_attn.A_log", vec![vh]),
        dt_bias: s("linear_attn.dt_bias", vec![vh]),
        norm: s("linear_attn.norm.weight", vec![d.v_head_dim]),
        out: s("linear_attn.out_proj.weight", vec![h, val]),
    }
}

fn layer_table(cfg: &Config, li: usize, l: &LayerDesc) -> LayerParts<Spec> {
    let h = cfg.hidden_size;
    let s = |n: &str, shape: Vec<usize>| Spec {
        name: cfg.tensor(&format!("layers.{li}.{n}")),
        shape,
    };
    let when = |on: bool, n: &str, shape: Vec<usize>| on.then(|| s(n, shape));
    // Slot names: pre-norm blocks call their MLP input norm
    // `post_attention_layernorm`; post-norm and sandwich blocks use that name
    // for the attention output norm.
    let Norms {
        attn_in,
        attn_out,
        mlp_in,
        mlp_out,
    } = l.norms;
    let mlp_in_name = if attn_out {
        "pre_feedforward_layernorm.weight"
    } else {
        "post_attention_layernorm.weight"
    };
    let ple = cfg.embed.per_layer.as_ref().filter(|_| l.per_layer_input);
    let i = l.mlp.intermediate;
    LayerParts {
        attn_in_norm: when(attn_in, "input_layernorm.weight", vec![h]),
        mixer: match &l.mixer {
            Mixer::Attention(a) => MixerParts::Attention(attn_table(a, h, &s)),
            Mixer::GatedDeltaNet(d) => MixerParts::DeltaNet(deltanet_table(d, h, &s)),
        },
        attn_out_norm: when(attn_out, "post_attention_layernorm.weight", vec![h]),
        mlp_in_norm: when(mlp_in, mlp_in_name, vec![h]),
        gate: s("mlp.gate_proj.weight", vec![i, h]),
        up: s("mlp.up_proj.weight", vec![i, h]),
        down: s("mlp.down_proj.weight", vec![h, i]),
        mlp_out_norm: when(mlp_out, "post_feedforward_layernorm.weight", vec![h]),
        ple_gate: ple.map(|p| s("per_layer_input_gate.weight", vec![p.dim, h])),
        ple_proj: ple.map(|p| s("per_layer_projection.weight", vec![h, p.dim])),
        ple_norm: ple.map(|_| s("post_per_layer_input_norm.weight", vec![h])),
        layer_scalar: when(l.layer_scalar, "layer_scalar", vec![1]),
    }
}

/// The table of `cfg`. `lm_head_stored`: an untied checkpoint's
/// `lm_head.weight` (a tied head is the embedding whatever the file holds).
pub fn table(cfg: &Config) -> DecoderParts<Spec> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let s = |n: &str, shape: Vec<usize>| Spec {
        name: cfg.tensor(n),
        shape,
    };
    let embed = s("embed_tokens.weight", vec![v, h]);
    let pl = cfg.embed.per_layer.as_ref();
    let n = cfg.num_layers;
    DecoderParts {
        lm_head: if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            Spec {
                name: "lm_head.weight".into(),
                shape: vec![v, h],
            }
        },
        embed,
        ple_embed: pl.map(|p| s("embed_tokens_per_layer.weight", vec![p.vocab, n * p.dim])),
        ple_proj: pl.map(|p| s("per_layer_model_projection.weight", vec![n * p.dim, h])),
        ple_norm: pl.map(|p| s("per_layer_projection_norm.weight", vec![p.dim])),
        layers: cfg
            .layers
            .iter()
            .enumerate()
            .map(|(li, l)| layer_table(cfg, li, l))
            .collect(),
        final_norm: s("norm.weight", vec![h]),
    }
}

/// Tensors that checkpoints carry without meaning for the forward: RoPE
/// buffers some exporters save, and a tied model's copy of the embedding.
fn harmless(cfg: &Config, name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

impl<'a> DecoderWeights<'a> {
    /// Look up every tensor the description implies; the first missing or
    /// mis-shaped one is reported by name.
    pub fn bind(cfg: &Config, w: &'a Weights) -> Result<DecoderWeights<'a>> {
        table(cfg).try_map(|s| w.get(&s.name, &s.shape))
    }

    /// [`DecoderWeights::bind`], then refuse tensors nobody would read
    /// (a config with fewer layers than the checkpoint, say) outside the
    /// family's ignored parts.
    pub fn bind_all(cfg: &Config, w: &'a Weights) -> Result<DecoderWeights<'a>> {
        let bound = Self::bind(cfg, w)?;
        let used: std::collections::HashSet<&str> = bound.all().iter().map(|t| t.name).collect();
        let mut unused: Vec<&str> = w
            .names()
            .filter(|n| !used.contains(n))
            .filter(|n| !cfg.ignored.iter().any(|p| n.starts_with(p.as_str())))
            .filter(|n| !harmless(cfg, n))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            let more = unused.len().saturating_sub(5);
            let shown = unused[..unused.len().min(5)].join(", ");
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            return Err(Error::config(
                w.dir(),
                format!(
                    "the checkpoint holds tensors that config.json does not use: {shown}{tail} \
                     (does `num_hidden_layers` or `tie_word_embeddings` match the weights?)"
                ),
            ));
        }
        Ok(bound)
    }
}
