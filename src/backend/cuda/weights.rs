//! A decoder's weights resident on the GPU, uploaded once.
//!
//! Matrices keep the checkpoint's dtype (bf16, f16 or f32: the "compute
//! dtype" of the model, which its GEMM inputs and KV pool also use); the
//! projections that read the same input are concatenated at upload so each
//! runs as one GEMM: `qkv = [q; k; v]` (`[qd + 2·kvd, hidden]`) and
//! `gate_up = [gate; up]` (`[2·inter, hidden]`). Norm weights and biases are
//! small and widened to f32. A tied LM head shares the embedding.

use cudarc::driver::CudaSlice;

use super::device::{DevTensor, Gpu};
use crate::model::config::{NormKind, QkNorm, Uniform};
use crate::model::layout::MixerParts;
use crate::model::weights::DType;
use crate::model::weights::Tensor;
use crate::model::{Config, Model};
use crate::{Error, Result};

pub struct DeviceLayer {
    /// `[hidden]` each, where the layer has them (`Uniform::norms`): before
    /// and after attention, before and after the MLP.
    pub attn_in_norm: Option<CudaSlice<f32>>,
    pub attn_out_norm: Option<CudaSlice<f32>>,
    pub mlp_in_norm: Option<CudaSlice<f32>>,
    pub mlp_out_norm: Option<CudaSlice<f32>>,
    pub mixer: DeviceMixer,
    /// `[2·inter, hidden]`
    pub gate_up: DevTensor,
    /// `[hidden, inter]`
    pub down: DevTensor,
}

/// A layer's token mixer on the device.
pub enum DeviceMixer {
    Attention(Box<DeviceAttn>),
    DeltaNet(Box<DeviceDeltaNet>),
}

pub struct DeviceAttn {
    /// `[qw + 2·kvd, hidden]`, qw = qd (2·qd with an output gate: per head
    /// `[query | gate]`)
    pub qkv: DevTensor,
    /// `[qw + 2·kvd]`
    pub qkv_bias: Option<CudaSlice<f32>>,
    /// `[head_dim]` each (Qwen3), or `[qd]` and `[kvd]` (Olmo 2/3)
    pub q_norm: Option<CudaSlice<f32>>,
    pub k_norm: Option<CudaSlice<f32>>,
    /// `[hidden, qd]`
    pub o: DevTensor,
    /// Index of this layer's RoPE in [`DeviceModel::ropes`].
    pub rope: usize,
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

pub struct DeviceModel {
    pub config: Config,
    /// The one layer geometry every layer shares (the CUDA path runs uniform
    /// decoders only, [`Config::uniform`]).
    pub shape: Uniform,
    /// Dtype of every matrix, GEMM input and the KV pool.
    pub dtype: DType,
    /// `[vocab, hidden]`
    pub embed: DevTensor,
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

/// The distinct RoPEs of `shape`'s layers on the device, and each layer's
/// index among them.
fn upload_ropes(gpu: &Gpu, shape: &Uniform) -> Result<(Vec<DeviceRope>, Vec<usize>)> {
    let mut distinct: Vec<&crate::model::config::Rope> = Vec::new();
    let index = (shape.ropes.iter())
        .map(|r| match distinct.iter().position(|d| *d == r) {
            Some(i) => i,
            None => {
                distinct.push(r);
                distinct.len() - 1
            }
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
        let shape = uniform(cfg)?;
        let w = model.bind();
        let stored = w
            .layers
            .first()
            .map_or(w.embed.data.dtype(), |l| l.mixer.out().data.dtype());
        // Norm weights as applied: `w`, or `1 + w` for zero-centred ones.
        let kind = shape.norm_kind;
        let weight = |t: &Tensor| -> Result<CudaSlice<f32>> {
            let mut v = t.data.to_f32_vec();
            if kind == NormKind::OnePlusWeight {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            gpu.upload(&v)
        };
        // A norm the layer description has must be in the tensor table.
        let norm = |has: bool, t: &Option<Tensor>| -> Result<_> {
            match (has, t) {
                (false, _) => Ok(None),
                (true, Some(t)) => Ok(Some(weight(t)?)),
                (true, None) => Err(Error::Backend("cuda: a layer without its norm".into())),
            }
        };
        let (ropes, rope_of) = upload_ropes(gpu, &shape)?;
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
        let nm = shape.norms;
        for (li, layer) in w.layers.iter().enumerate() {
            let mixer = match (&layer.mixer, &shape.deltanet[li]) {
                (MixerParts::Attention(l), None) => {
                    let (Some(k), Some(v)) = (&l.k, &l.v) else {
                        return Err(Error::Backend("cuda: a layer without its own K/V".into()));
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
                        qkv: concat(&[&l.q, k, v])?,
                        qkv_bias,
                        q_norm: l.q_norm.as_ref().map(weight).transpose()?,
                        k_norm: l.k_norm.as_ref().map(weight).transpose()?,
                        o: concat(&[&l.o])?,
                        rope: rope_of[li],
                    }))
                }
                (MixerParts::DeltaNet(d), Some(desc)) => {
                    let (cd, kernel) = (desc.conv_dim(), desc.conv_kernel);
                    check_deltanet(desc)?;
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
            layers.push(DeviceLayer {
                attn_in_norm: norm(nm.attn_in, &layer.attn_in_norm)?,
                attn_out_norm: norm(nm.attn_out, &layer.attn_out_norm)?,
                mlp_in_norm: norm(nm.mlp_in, &layer.mlp_in_norm)?,
                mlp_out_norm: norm(nm.mlp_out, &layer.mlp_out_norm)?,
                mixer,
                gate_up: concat(&[&layer.gate, &layer.up])?,
                down: concat(&[&layer.down])?,
            });
        }
        let embed = concat(&[&w.embed])?;
        let lm_head = if w.lm_head.name == w.embed.name {
            None
        } else {
            Some(concat(&[&w.lm_head])?)
        };
        Ok(DeviceModel {
            dtype,
            embed,
            layers,
            final_norm: weight(&w.final_norm)?,
            lm_head,
            ropes,
            shape,
            config: cfg.clone(),
        })
    }

    /// Random weights of `config`'s shape, generated on the device (benches:
    /// a 7B-shaped model costs no host RNG or upload). Matrices are uniform in
    /// ±1/√fan_in, norms 1, biases 0, so activations stay finite.
    pub fn random(gpu: &Gpu, config: &Config, dtype: DType, seed: u64) -> Result<DeviceModel> {
        let c = config;
        let u = uniform(c)?;
        let (h, hd, inter) = (c.hidden_size, u.head_dim, u.intermediate_size);
        let (qd, kvd) = (u.num_heads * hd, u.num_kv_heads * hd);
        let mut next_seed = seed;
        let mut matrix = |rows: usize, cols: usize| -> Result<DevTensor> {
            let mut t = DevTensor::alloc(gpu, dtype, rows * cols)?;
            let a = 1.0 / (cols as f32).sqrt();
            next_seed = next_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            gpu.fill_uniform(&mut t.all_mut(), next_seed, -a, a)?;
            Ok(t)
        };
        let ones = |n: usize| gpu.upload(&vec![1.0f32; n]);
        let norm = |has: bool| if has { ones(h).map(Some) } else { Ok(None) };
        let (ropes, rope_of) = upload_ropes(gpu, &u)?;
        let (nm, qk) = (u.norms, u.qk_norm);
        let (qn, kn) = match qk {
            QkNorm::PerHead => (hd, hd),
            _ => (qd, kvd),
        };
        let qw = if u.output_gate { 2 * qd } else { qd };
        let mut layers = Vec::with_capacity(c.num_layers);
        for (&rope, dn) in rope_of.iter().zip(&u.deltanet).take(c.num_layers) {
            let mixer = match dn {
                None => DeviceMixer::Attention(Box::new(DeviceAttn {
                    qkv: matrix(qw + 2 * kvd, h)?,
                    qkv_bias: (u.qkv_bias)
                        .then(|| gpu.upload(&vec![0.0f32; qw + 2 * kvd]))
                        .transpose()?,
                    q_norm: (qk != QkNorm::None).then(|| ones(qn)).transpose()?,
                    k_norm: (qk != QkNorm::None).then(|| ones(kn)).transpose()?,
                    o: matrix(h, qd)?,
                    rope,
                })),
                Some(d) => {
                    check_deltanet(d)?;
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
            layers.push(DeviceLayer {
                attn_in_norm: norm(nm.attn_in)?,
                attn_out_norm: norm(nm.attn_out)?,
                mlp_in_norm: norm(nm.mlp_in)?,
                mlp_out_norm: norm(nm.mlp_out)?,
                mixer,
                gate_up: matrix(2 * inter, h)?,
                down: matrix(h, inter)?,
            });
        }
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
            layers,
            final_norm: ones(h)?,
            lm_head,
            ropes,
            shape: u,
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
            mixer + l.gate_up.len + l.down.len
        };
        let n: usize = self.layers.iter().map(per_layer).sum::<usize>()
            + self.embed.len
            + self.lm_head.as_ref().map_or(0, |t| t.len);
        n * self.dtype.size()
    }
}

/// The layer shape of a uniform decoder, or the reason the CUDA backend
/// cannot run this model yet.
fn uniform(cfg: &Config) -> Result<Uniform> {
    cfg.uniform().ok_or_else(|| {
        Error::Backend(format!(
            "cuda: {} is not a uniform decoder (per-layer head dims, norm placements, MLPs or \
             embeddings, GELU MLPs, v norms, K/V sharing, layer scalars or a logit soft-cap); \
             the CUDA backend does not run it yet: use --device cpu",
            cfg.arch_name
        ))
    })
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
