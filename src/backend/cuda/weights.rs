//! A decoder's weights resident on the GPU, uploaded once.
//!
//! Matrices keep the checkpoint's dtype (bf16, f16 or f32: the "compute
//! dtype" of the model, which its GEMM inputs and KV pool also use); the
//! projections that read the same input are concatenated at upload so each
//! runs as one GEMM: `qkv = [q; k; v]` (`[qd + 2·kvd, hidden]`) and
//! `gate_up = [gate; up]` (`[2·inter, hidden]`). Norm weights and biases are
//! small and widened to f32. A tied LM head shares the embedding. Every
//! layer keeps its own description (head dims, window, scale, K/V source,
//! MLP width and activation may differ per layer: Gemma 4), and Gemma's
//! per-layer embedding table stays whole on the device (its rows are
//! gathered per token by `ple_gate_mul`).

use cudarc::driver::CudaSlice;

use super::device::{DevTensor, Gpu};
use super::kernels::MAX_HEAD_DIM;
use crate::backend::cpu::embed::scale_in;
use crate::model::config::{AttnDesc, Mixer, MlpDesc, NormKind, PerLayerEmbed, QkNorm, Rope};
use crate::model::layout::MixerParts;
use crate::model::weights::DType;
use crate::model::weights::Tensor;
use crate::model::{Config, Model};
use crate::{Error, Result};

pub struct DeviceLayer {
    /// `[hidden]` each, where the layer has them (`LayerDesc::norms`):
    /// before and after the mixer, before and after the MLP.
    pub attn_in_norm: Option<CudaSlice<f32>>,
    pub attn_out_norm: Option<CudaSlice<f32>>,
    pub mlp_in_norm: Option<CudaSlice<f32>>,
    pub mlp_out_norm: Option<CudaSlice<f32>>,
    pub mixer: DeviceMixer,
    pub mlp: MlpDesc,
    /// `[2·inter, hidden]`
    pub gate_up: DevTensor,
    /// `[hidden, inter]`
    pub down: DevTensor,
    /// Gemma's per-layer input (`LayerDesc::per_layer_input`).
    pub ple: Option<LayerPle>,
    /// Gemma's layer scalar: the residual stream is multiplied by it at the
    /// end of the layer (1 without one).
    pub scalar: f32,
}

/// One layer's per-layer-input tensors: `x += norm(proj(gelu(gate(x)) ⊙ P[l]))`.
pub struct LayerPle {
    /// `[dim, hidden]`
    pub gate: DevTensor,
    /// `[hidden, dim]`
    pub proj: DevTensor,
    /// `[hidden]` (plain weight)
    pub norm: CudaSlice<f32>,
}

/// Gemma's per-layer embeddings (`EmbedDesc::per_layer`); see
/// kernels/act_mul.cu's `ple_gate_mul`.
pub struct DevicePle {
    pub desc: PerLayerEmbed,
    /// `[ple_vocab, layers · dim]`
    pub table: DevTensor,
    /// `[layers · dim, hidden]`: layer `l` reads rows `[l·dim, (l+1)·dim)`.
    pub proj: DevTensor,
    /// `[dim]` (plain weight)
    pub norm: CudaSlice<f32>,
    /// `embed_scale` rounded to the table's stored dtype, as transformers does.
    pub embed_scale: f32,
}

/// A layer's token mixer on the device.
pub enum DeviceMixer {
    Attention(Box<DeviceAttn>),
    DeltaNet(Box<DeviceDeltaNet>),
}

pub struct DeviceAttn {
    /// The layer's geometry, window, scale, norms and K/V source.
    pub desc: AttnDesc,
    /// `[qw + 2·kvd, hidden]`, qw = qd (2·qd with an output gate: per head
    /// `[query | gate]`); `[qw, hidden]` when the layer reads another
    /// layer's K/V (`desc.kv_from`).
    pub qkv: DevTensor,
    /// `[qw + 2·kvd]`
    pub qkv_bias: Option<CudaSlice<f32>>,
    /// `[head_dim]` each (Qwen3, Gemma), or `[qd]` and `[kvd]` (Olmo 2/3);
    /// no k norm where the layer has no K.
    pub q_norm: Option<CudaSlice<f32>>,
    pub k_norm: Option<CudaSlice<f32>>,
    /// `[hidden, qd]`
    pub o: DevTensor,
    /// Index of this layer's RoPE in [`DeviceModel::ropes`].
    pub rope: usize,
}

impl DeviceAttn {
    /// Width of the QKV GEMM's output rows.
    pub fn qkv_width(&self) -> usize {
        let d = &self.desc;
        let qw = if d.output_gate {
            2 * d.q_dim()
        } else {
            d.q_dim()
        };
        qw + if d.kv_from.is_some() {
            0
        } else {
            2 * d.kv_dim()
        }
    }
}

/// A gated-DeltaNet layer (`linear_attn.*`); see kernels/deltanet.cu.
pub struct DeviceDeltaNet {
    pub desc: crate::model::config::DeltaNetDesc,
    /// `[conv_dim, hidden]`, `[value_dim, hidden]`, `[v_heads, hidden]` ×2
    pub in_qkv: DevTensor,
    pub in_z: DevTensor,
    pub in_b: DevTensor,
    pub in_a: DevTensor,
    /// `[kernel, conv_dim]`: the depthwise convolution, transposed.
    pub conv_t: CudaSlice<f32>,
    /// `[v_heads]` each
    pub a_log: CudaSlice<f32>,
    pub dt_bias: CudaSlice<f32>,
    /// `[v_head_dim]`: the gated output norm (plain weight).
    pub norm: CudaSlice<f32>,
    /// `[hidden, value_dim]`
    pub out: DevTensor,
}

impl DeviceLayer {
    /// The attention mixer, when the layer has one.
    pub fn attn(&self) -> Option<&DeviceAttn> {
        match &self.mixer {
            DeviceMixer::Attention(a) => Some(a),
            DeviceMixer::DeltaNet(_) => None,
        }
    }
}

pub struct DeviceModel {
    pub config: Config,
    /// Dtype of every matrix, GEMM input and the KV pool.
    pub dtype: DType,
    /// `[vocab, hidden]`
    pub embed: DevTensor,
    /// The embedding rows' scale as applied (Gemma: √hidden rounded to the
    /// stored dtype), else 1.
    pub embed_scale: f32,
    pub ple: Option<DevicePle>,
    pub layers: Vec<DeviceLayer>,
    pub final_norm: CudaSlice<f32>,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<DevTensor>,
    /// The distinct RoPEs of the layers.
    pub ropes: Vec<DeviceRope>,
}

/// `[head_dim / 2]` RoPE frequencies (scaling included) and the factor
/// cos/sin carry.
pub type DeviceRope = (CudaSlice<f32>, f32);

/// The distinct RoPEs of `cfg`'s attention layers on the device, and each
/// layer's index among them (0 for a DeltaNet layer).
fn upload_ropes(gpu: &Gpu, cfg: &Config) -> Result<(Vec<DeviceRope>, Vec<usize>)> {
    let mut distinct: Vec<&Rope> = Vec::new();
    let index = (cfg.layers.iter())
        .map(|l| match l.attn().map(|a| &a.rope) {
            None => 0,
            Some(r) => match distinct.iter().position(|d| *d == r) {
                Some(i) => i,
                None => {
                    distinct.push(r);
                    distinct.len() - 1
                }
            },
        })
        .collect();
    let ropes = (distinct.iter())
        .map(|r| Ok((gpu.upload(&r.inv_freq)?, r.attention_factor)))
        .collect::<Result<_>>()?;
    Ok((ropes, index))
}

impl DeviceModel {
    /// Copy a loaded checkpoint to the device. Matrices keep their stored
    /// dtype, or are converted to `compute` when given (e.g. `F32` for a bf16
    /// checkpoint: f32 GEMM operands, exactly the CPU backend's arithmetic,
    /// at twice the memory and without bf16 tensor cores).
    pub fn upload(gpu: &Gpu, model: &Model, compute: Option<DType>) -> Result<DeviceModel> {
        let cfg = &model.config;
        check_runs(cfg)?;
        let w = model.bind();
        let stored = w.embed.data.dtype();
        // Norm weights as applied: `w`, or `1 + w` for zero-centred ones.
        let weight = |t: &Tensor| -> Result<CudaSlice<f32>> {
            let mut v = t.data.to_f32_vec();
            if cfg.norm == NormKind::OnePlusWeight {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            gpu.upload(&v)
        };
        // A tensor the description implies must be in the table.
        let missing = |li: usize, what: &str| {
            Error::Backend(format!("cuda: layer {li} has no {what} tensor"))
        };
        let norm = |li: usize, has: bool, t: &Option<Tensor>| -> Result<_> {
            match (has, t) {
                (false, _) => Ok(None),
                (true, Some(t)) => Ok(Some(weight(t)?)),
                (true, None) => Err(missing(li, "norm")),
            }
        };
        let (ropes, rope_of) = upload_ropes(gpu, cfg)?;
        let dtype = compute.unwrap_or(stored);
        let small = |t: &Tensor| gpu.upload(&t.data.to_f32_vec());
        let concat = |parts: &[&Tensor]| -> Result<DevTensor> {
            let len = parts.iter().map(|t| t.data.len()).sum();
            let mut out = DevTensor::alloc(gpu, dtype, len)?;
            let mut at = 0;
            for t in parts {
                out.write(gpu, at, t.data)?;
                at += t.data.len();
            }
            Ok(out)
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for (li, (layer, ld)) in w.layers.iter().zip(&cfg.layers).enumerate() {
            let mixer = match (&layer.mixer, &ld.mixer) {
                (MixerParts::Attention(l), Mixer::Attention(desc)) => {
                    let qkv = match (&l.k, &l.v, desc.kv_from) {
                        (Some(k), Some(v), None) => concat(&[&l.q, k, v])?,
                        (None, None, Some(_)) => concat(&[&l.q])?,
                        _ => return Err(missing(li, "k/v projection")),
                    };
                    let qkv_bias = match (&l.q_bias, &l.k_bias, &l.v_bias) {
                        (Some(q), Some(k), Some(v)) => {
                            let mut b = q.data.to_f32_vec();
                            b.extend(k.data.to_f32_vec());
                            b.extend(v.data.to_f32_vec());
                            Some(gpu.upload(&b)?)
                        }
                        _ => None,
                    };
                    DeviceMixer::Attention(Box::new(DeviceAttn {
                        desc: desc.clone(),
                        qkv,
                        qkv_bias,
                        q_norm: l.q_norm.as_ref().map(weight).transpose()?,
                        k_norm: l.k_norm.as_ref().map(weight).transpose()?,
                        o: concat(&[&l.o])?,
                        rope: rope_of[li],
                    }))
                }
                (MixerParts::DeltaNet(d), Mixer::GatedDeltaNet(desc)) => {
                    let (cd, kernel) = (desc.conv_dim(), desc.conv_kernel);
                    let conv = d.conv.data.to_f32_vec();
                    let mut conv_t = vec![0.0f32; kernel * cd];
                    for c in 0..cd {
                        for j in 0..kernel {
                            conv_t[j * cd + c] = conv[c * kernel + j];
                        }
                    }
                    DeviceMixer::DeltaNet(Box::new(DeviceDeltaNet {
                        desc: *desc,
                        in_qkv: concat(&[&d.in_qkv])?,
                        in_z: concat(&[&d.in_z])?,
                        in_b: concat(&[&d.in_b])?,
                        in_a: concat(&[&d.in_a])?,
                        conv_t: gpu.upload(&conv_t)?,
                        a_log: small(&d.a_log)?,
                        dt_bias: small(&d.dt_bias)?,
                        norm: small(&d.norm)?,
                        out: concat(&[&d.out])?,
                    }))
                }
                _ => {
                    return Err(Error::Backend(format!(
                        "cuda: layer {li}'s tensors do not match its description"
                    )));
                }
            };
            let ple = match (
                ld.per_layer_input,
                &layer.ple_gate,
                &layer.ple_proj,
                &layer.ple_norm,
            ) {
                (false, ..) => None,
                (true, Some(g), Some(p), Some(n)) => Some(LayerPle {
                    gate: concat(&[g])?,
                    proj: concat(&[p])?,
                    norm: small(n)?,
                }),
                _ => return Err(missing(li, "per-layer input")),
            };
            let scalar = match (ld.layer_scalar, &layer.layer_scalar) {
                (false, _) => 1.0,
                (true, Some(s)) => s.data.to_f32_vec().first().copied().unwrap_or(1.0),
                (true, None) => return Err(missing(li, "layer scalar")),
            };
            let nm = ld.norms;
            layers.push(DeviceLayer {
                attn_in_norm: norm(li, nm.attn_in, &layer.attn_in_norm)?,
                attn_out_norm: norm(li, nm.attn_out, &layer.attn_out_norm)?,
                mlp_in_norm: norm(li, nm.mlp_in, &layer.mlp_in_norm)?,
                mlp_out_norm: norm(li, nm.mlp_out, &layer.mlp_out_norm)?,
                mixer,
                mlp: ld.mlp,
                gate_up: concat(&[&layer.gate, &layer.up])?,
                down: concat(&[&layer.down])?,
                ple,
                scalar,
            });
        }
        let ple = match (&cfg.embed.per_layer, &w.ple_embed, &w.ple_proj, &w.ple_norm) {
            (None, ..) => None,
            (Some(desc), Some(t), Some(p), Some(n)) => Some(DevicePle {
                desc: desc.clone(),
                embed_scale: scale_in(t.data.dtype(), desc.embed_scale),
                table: concat(&[t])?,
                proj: concat(&[p])?,
                norm: small(n)?,
            }),
            _ => {
                return Err(Error::Backend(
                    "cuda: the per-layer embedding tensors are missing".into(),
                ));
            }
        };
        let embed = concat(&[&w.embed])?;
        let lm_head = if w.lm_head.name == w.embed.name {
            None
        } else {
            Some(concat(&[&w.lm_head])?)
        };
        Ok(DeviceModel {
            dtype,
            embed,
            embed_scale: cfg.embed.scale.map_or(1.0, |s| scale_in(stored, s)),
            ple,
            layers,
            final_norm: weight(&w.final_norm)?,
            lm_head,
            ropes,
            config: cfg.clone(),
        })
    }

    /// Random weights of `config`'s shape, generated on the device (benches:
    /// a 7B-shaped model costs no host RNG or upload). Matrices are uniform in
    /// ±1/√fan_in, norms 1, biases 0, layer scalars 1, so activations stay
    /// finite.
    pub fn random(gpu: &Gpu, config: &Config, dtype: DType, seed: u64) -> Result<DeviceModel> {
        let c = config;
        check_runs(c)?;
        let h = c.hidden_size;
        let mut next_seed = seed;
        let mut matrix = |rows: usize, cols: usize| -> Result<DevTensor> {
            let mut t = DevTensor::alloc(gpu, dtype, rows * cols)?;
            let a = 1.0 / (cols as f32).sqrt();
            next_seed = next_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            gpu.fill_uniform(&mut t.all_mut(), next_seed, -a, a)?;
            Ok(t)
        };
        let ones = |n: usize| gpu.upload(&vec![1.0f32; n]);
        let (ropes, rope_of) = upload_ropes(gpu, c)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for (ld, &rope) in c.layers.iter().zip(&rope_of) {
            let norm = |has: bool| if has { ones(h).map(Some) } else { Ok(None) };
            let mixer = match &ld.mixer {
                Mixer::Attention(a) => {
                    let (qd, kvd, hd) = (a.q_dim(), a.kv_dim(), a.head_dim);
                    let qw = if a.output_gate { 2 * qd } else { qd };
                    let own_kv = a.kv_from.is_none();
                    let width = qw + if own_kv { 2 * kvd } else { 0 };
                    let (qn, kn) = match a.qk_norm {
                        QkNorm::PerHead => (hd, hd),
                        _ => (qd, kvd),
                    };
                    let has_norm = a.qk_norm != QkNorm::None;
                    DeviceMixer::Attention(Box::new(DeviceAttn {
                        desc: a.clone(),
                        qkv: matrix(width, h)?,
                        qkv_bias: (a.bias)
                            .then(|| gpu.upload(&vec![0.0f32; width]))
                            .transpose()?,
                        q_norm: has_norm.then(|| ones(qn)).transpose()?,
                        k_norm: (has_norm && own_kv).then(|| ones(kn)).transpose()?,
                        o: matrix(h, qd)?,
                        rope,
                    }))
                }
                Mixer::GatedDeltaNet(d) => {
                    let (cd, vd, vh) = (d.conv_dim(), d.value_dim(), d.num_v_heads);
                    // A smoothing convolution (taps 1/K) keeps activations O(1).
                    let taps = vec![1.0 / d.conv_kernel as f32; d.conv_kernel * cd];
                    DeviceMixer::DeltaNet(Box::new(DeviceDeltaNet {
                        desc: *d,
                        in_qkv: matrix(cd, h)?,
                        in_z: matrix(vd, h)?,
                        in_b: matrix(vh, h)?,
                        in_a: matrix(vh, h)?,
                        conv_t: gpu.upload(&taps)?,
                        a_log: gpu.upload(&vec![0.0f32; vh])?,
                        dt_bias: gpu.upload(&vec![0.0f32; vh])?,
                        norm: ones(d.v_head_dim)?,
                        out: matrix(h, vd)?,
                    }))
                }
            };
            let ple = match (ld.per_layer_input, &c.embed.per_layer) {
                (true, Some(p)) => Some(LayerPle {
                    gate: matrix(p.dim, h)?,
                    proj: matrix(h, p.dim)?,
                    norm: ones(h)?,
                }),
                _ => None,
            };
            let (nm, inter) = (ld.norms, ld.mlp.intermediate);
            layers.push(DeviceLayer {
                attn_in_norm: norm(nm.attn_in)?,
                attn_out_norm: norm(nm.attn_out)?,
                mlp_in_norm: norm(nm.mlp_in)?,
                mlp_out_norm: norm(nm.mlp_out)?,
                mixer,
                mlp: ld.mlp,
                gate_up: matrix(2 * inter, h)?,
                down: matrix(h, inter)?,
                ple,
                scalar: 1.0,
            });
        }
        let ple = match &c.embed.per_layer {
            Some(p) => Some(DevicePle {
                desc: p.clone(),
                embed_scale: scale_in(dtype, p.embed_scale),
                table: matrix(p.vocab, c.num_layers * p.dim)?,
                proj: matrix(c.num_layers * p.dim, h)?,
                norm: ones(p.dim)?,
            }),
            None => None,
        };
        let embed = matrix(c.vocab_size, h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(matrix(c.vocab_size, h)?)
        };
        gpu.synchronize()?;
        Ok(DeviceModel {
            dtype,
            embed,
            embed_scale: c.embed.scale.map_or(1.0, |s| scale_in(dtype, s)),
            ple,
            layers,
            final_norm: ones(h)?,
            lm_head,
            ropes,
            config: c.clone(),
        })
    }

    pub fn lm_head(&self) -> &DevTensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of device memory held by the matrices.
    pub fn matrix_bytes(&self) -> usize {
        let per_layer = |l: &DeviceLayer| {
            let mixer = match &l.mixer {
                DeviceMixer::Attention(a) => a.qkv.len + a.o.len,
                DeviceMixer::DeltaNet(d) => {
                    d.in_qkv.len + d.in_z.len + d.in_b.len + d.in_a.len + d.out.len
                }
            };
            let ple = l.ple.as_ref().map_or(0, |p| p.gate.len + p.proj.len);
            mixer + l.gate_up.len + l.down.len + ple
        };
        let n: usize = self.layers.iter().map(per_layer).sum::<usize>()
            + self.embed.len
            + self.ple.as_ref().map_or(0, |p| p.table.len + p.proj.len)
            + self.lm_head.as_ref().map_or(0, |t| t.len);
        n * self.dtype.size()
    }
}

/// Whether the CUDA kernels take `cfg`'s layers: attention head dims up to
/// [`MAX_HEAD_DIM`] and DeltaNet heads the recurrence kernels are built
/// for; the reason they do not, otherwise.
pub fn check_runs(cfg: &Config) -> Result<()> {
    for (li, l) in cfg.layers.iter().enumerate() {
        match &l.mixer {
            Mixer::Attention(a) if a.head_dim > MAX_HEAD_DIM || a.head_dim % 2 != 0 => {
                return Err(Error::Backend(format!(
                    "cuda: layer {li}'s head_dim {} is past the attention kernels' {MAX_HEAD_DIM}; \
                     use --device cpu",
                    a.head_dim
                )));
            }
            Mixer::GatedDeltaNet(d) => check_deltanet(d)?,
            Mixer::Attention(_) => {}
        }
    }
    Ok(())
}

/// Whether the DeltaNet kernels take these head sizes
/// ([`super::deltanet::recurrence_layout`]).
fn check_deltanet(d: &crate::model::config::DeltaNetDesc) -> Result<()> {
    match super::deltanet::recurrence_layout(d.k_head_dim, d.v_head_dim) {
        Some(_) => Ok(()),
        None => Err(Error::Backend(format!(
            "cuda: DeltaNet heads of {}×{} are not supported by the GPU kernels",
            d.k_head_dim, d.v_head_dim
        ))),
    }
}

/// Check a device-side allocation size request before making it.
pub(crate) fn check_free(gpu: &Gpu, bytes: usize, what: &str) -> Result<()> {
    let free = gpu.free_memory()?;
    if bytes > free {
        return Err(crate::Error::Backend(format!(
            "cuda: {what} needs {:.1} GiB, {:.1} GiB free on the device",
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}
