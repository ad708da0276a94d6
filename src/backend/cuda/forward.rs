//! Teacher-forced forward of one decoder on the GPU over a packed batch — the
//! same model math as `cpu::forward::forward_hidden`, step for step:
//!
//! ```text
//! x = embed(tokens) [· scale]                           (f32 residual stream)
//! per layer:
//!   n   = [rmsnorm](x = (x + [rmsnorm](delta of the previous layer)) [· its scalar])
//!   qkv = n · [q;k;v]ᵀ                                  (cuBLAS → compute dtype)
//!   q, pool[k], pool[v] = rope(qk_norm(qkv + bias))     (paged KV write; all → compute dtype)
//!   a   = attention(q, pool)                            → compute dtype
//!   delta = a · oᵀ (→ compute dtype);  n = [rmsnorm](x += [rmsnorm](delta))
//!   delta = act_mul(n · [gate;up]ᵀ → compute dtype) · downᵀ (→ compute dtype)
//!   [Gemma: x += rmsnorm(delta); delta = per_layer_input(x)]
//! hidden[rows] = rmsnorm(x + [rmsnorm](delta))[rows]    (final norm, gathered)
//! ```
//!
//! Every layer follows its own description (`LayerDesc`): its norm slots
//! (pre-norm models normalise each block's input, post-norm ones (Olmo 3)
//! each block's output before the residual add, sandwich ones (Gemma)
//! both), its mixer (attention of its own head dims, window, scale and
//! RoPE table, or a gated DeltaNet), its MLP's width and activation, and
//! Gemma's extras: the weightless v norm, per-layer inputs
//! ([`super::ple`]), the layer scalar, and KV sharing — a layer with
//! `kv_from` projects q alone and attends over the K/V pool its source
//! layer wrote, which keeps that pool for the whole forward.
//!
//! Activations that feed a GEMM are stored in the weights' dtype, because
//! cuBLAS' tensor-core GEMMs take both operands in one 16-bit type (there is
//! no f32 × bf16 GemmEx), and so are the projections' outputs (q/k/v,
//! gate/up, o and down) and the queries after RoPE, as transformers rounds
//! them; everything else — the residual stream, RoPE, softmax, norms'
//! statistics and the logits — is f32. For f32 checkpoints every step is
//! f32, as on the CPU.
//!
//! Linear stages run over chunks of [`LINEAR_CHUNK`] tokens of all sequences
//! at once (bounded scratch), attention over the whole batch. Only the rows
//! whose log-prob is wanted leave the forward (`rows`), already normed: the
//! LM head never runs elsewhere.

use cudarc::driver::CudaSlice;

use super::delta_chunk::DeltaRulePath;
use super::deltanet::{DeltaNetScratch, RecurrentCopies};
use super::device::{DevTensor, Gpu, sub, sub_mut};
use super::kernels::{ATTN_BR, AttnKernel, KV_BLOCK};
use super::kv::{DeviceKv, WaveCopies};
use super::ple::{PleScratch, per_layer_input};
use super::weights::{DeviceAttn, DeviceLayer, DeviceMixer, DeviceModel};
use crate::Result;
use crate::backend::cpu::ops::AttnShape;
use crate::backend::profile::Part;
use crate::model::config::LayerDesc;

/// Tokens per chunk for the linear layers.
pub const LINEAR_CHUNK: usize = 4096;

/// Where each token of a packed batch lives in the paged KV pool, and the
/// attention work list. Built on the host; see kernels/attention.cu for the
/// layout. A sequence may start after `past` cached tokens (a prefix-cache
/// hit, a multiple of [`KV_BLOCK`]): its first `past / KV_BLOCK` blocks then
/// hold K/V copied in from the cache, and only the tokens after them are
/// packed, computed and written.
#[derive(Debug, Clone)]
pub struct PagedBatch {
    /// `[num_seqs + 1]`: first packed row of each sequence.
    pub seq_start: Vec<i32>,
    /// `[num_seqs]`: cached tokens before each sequence's packed ones.
    pub past: Vec<i32>,
    /// `[T]`: position of each packed token within its sequence.
    pub pos: Vec<i32>,
    /// `[T]`: pool row of each token (`block · KV_BLOCK + offset`).
    pub slots: Vec<i32>,
    /// `[num_seqs, max_blocks]`: pool block of each sequence's logical block
    /// (unused entries −1).
    pub block_table: Vec<i32>,
    pub max_blocks: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// `[num_tiles, 2]`: (sequence, first packed query) of each attention
    /// tile, the tiles that see the most keys first.
    pub tiles: Vec<i32>,
}

impl PagedBatch {
    /// Sequences of `lens` tokens, each given the next free blocks in order.
    pub fn new(lens: &[usize]) -> PagedBatch {
        let seqs: Vec<(usize, usize)> = lens.iter().map(|&l| (0, l)).collect();
        Self::with_past(&seqs)
    }

    /// Sequences of `(past, new)` tokens (`past` a multiple of
    /// [`KV_BLOCK`]), each given the next free blocks in order.
    pub fn with_past(seqs: &[(usize, usize)]) -> PagedBatch {
        let needed: usize = seqs.iter().map(|(p, n)| (p + n).div_ceil(KV_BLOCK)).sum();
        let order: Vec<usize> = (0..needed).collect();
        Self::with_past_blocks(seqs, &order)
    }

    /// As [`PagedBatch::new`], but logical block `b` (counting over all
    /// sequences in order) is stored in pool block `order[b]`; the pool has
    /// `max(order) + 1` blocks. Tests use a shuffled order to exercise paging.
    pub fn with_blocks(lens: &[usize], order: &[usize]) -> PagedBatch {
        let seqs: Vec<(usize, usize)> = lens.iter().map(|&l| (0, l)).collect();
        Self::with_past_blocks(&seqs, order)
    }

    /// [`PagedBatch::with_past`] over the pool blocks `order`.
    pub fn with_past_blocks(seqs: &[(usize, usize)], order: &[usize]) -> PagedBatch {
        let blocks = |&(p, n): &(usize, usize)| (p + n).div_ceil(KV_BLOCK);
        let max_blocks = seqs.iter().map(blocks).max().unwrap_or(0);
        let total: usize = seqs.iter().map(|s| s.1).sum();
        let mut b = PagedBatch {
            seq_start: Vec::with_capacity(seqs.len() + 1),
            past: Vec::with_capacity(seqs.len()),
            pos: Vec::with_capacity(total),
            slots: Vec::with_capacity(total),
            block_table: vec![-1; seqs.len() * max_blocks],
            max_blocks,
            num_blocks: order.iter().max().map_or(0, |m| m + 1),
            tiles: Vec::new(),
        };
        let mut start = 0usize;
        let mut logical = 0usize;
        // (keys the tile's last query sees, sequence, first query)
        let mut tiles = Vec::new();
        for (s, seq) in seqs.iter().enumerate() {
            let (past, len) = *seq;
            debug_assert!(past.is_multiple_of(KV_BLOCK));
            b.seq_start.push(start as i32);
            b.past.push(past as i32);
            for j in 0..blocks(seq) {
                b.block_table[s * max_blocks + j] = order[logical] as i32;
                logical += 1;
            }
            for i in past..past + len {
                let block = b.block_table[s * max_blocks + i / KV_BLOCK] as usize;
                b.pos.push(i as i32);
                b.slots.push((block * KV_BLOCK + i % KV_BLOCK) as i32);
            }
            for q0 in (0..len).step_by(ATTN_BR) {
                tiles.push((past + (q0 + ATTN_BR).min(len), s, q0));
            }
            start += len;
        }
        b.seq_start.push(start as i32);
        // Heaviest first: a causal tile's work grows with the keys it sees,
        // and blocks start in grid order, so the longest ones start first
        // and the short ones fill in behind them instead of one long tile
        // running alone at the end of the launch.
        tiles.sort_by_key(|&(keys, s, q0)| (std::cmp::Reverse(keys), s, q0));
        b.tiles = (tiles.into_iter())
            .flat_map(|(_, s, q0)| [s as i32, q0 as i32])
            .collect();
        b
    }

    pub fn tokens(&self) -> usize {
        self.pos.len()
    }

    /// Rows of the KV pool.
    pub fn pool_rows(&self) -> usize {
        self.num_blocks * KV_BLOCK
    }

    /// Longest sequence.
    pub fn longest(&self) -> usize {
        self.seq_start
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }
}

/// A [`PagedBatch`] and its token ids on the device.
pub struct DeviceBatch {
    pub tokens: CudaSlice<u32>,
    pub pos: CudaSlice<i32>,
    pub slots: CudaSlice<i32>,
    pub seq_start: CudaSlice<i32>,
    pub past: CudaSlice<i32>,
    pub block_table: CudaSlice<i32>,
    pub tiles: CudaSlice<i32>,
    pub layout: PagedBatch,
}

impl DeviceBatch {
    pub fn upload(gpu: &Gpu, tokens: &[u32], layout: PagedBatch) -> Result<DeviceBatch> {
        Ok(DeviceBatch {
            tokens: gpu.upload(tokens)?,
            pos: gpu.upload(&layout.pos)?,
            slots: gpu.upload(&layout.slots)?,
            seq_start: gpu.upload(&layout.seq_start)?,
            past: gpu.upload(&layout.past)?,
            block_table: gpu.upload(&layout.block_table)?,
            tiles: gpu.upload(&layout.tiles)?,
            layout,
        })
    }
}

/// The kernels a forward runs where there is a choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardKernels {
    /// The delta rule's form in DeltaNet layers (`PADV_CUDA_DELTA_RULE`).
    pub rule: DeltaRulePath,
    /// The attention kernel (`PADV_CUDA_ATTENTION`).
    pub attention: AttnKernel,
}

/// Run `m` over `batch`; return the final-normed hidden states of packed rows
/// `rows` (`[rows.len(), hidden]` in the model's dtype). With `kv` (the
/// model's prefix-cache store and the wave's copies), each layer first
/// copies the hit blocks' K/V into the pool and afterwards the filled
/// blocks' K/V into the store (module doc of [`super::kv`]). DeltaNet
/// layers and attention run the kernels `kernels` says.
pub fn forward_rows(
    gpu: &Gpu,
    m: &DeviceModel,
    batch: &DeviceBatch,
    rows: &CudaSlice<i32>,
    mut kv: Option<(&mut DeviceKv, &WaveCopies)>,
    kernels: ForwardKernels,
) -> Result<DevTensor> {
    let cfg = &m.config;
    let t = batch.layout.tokens();
    let h = cfg.hidden_size;
    let dt = m.dtype;
    let eps = cfg.rms_norm_eps;
    let mut hidden = DevTensor::alloc(gpu, dt, rows.len() * h)?;
    if t == 0 || rows.is_empty() {
        return Ok(hidden);
    }

    // Buffers sized for the widest layer (Gemma's full layers have twice
    // the head dim, its KV-sharing layers twice the MLP).
    let attn_layers = || m.layers.iter().filter_map(DeviceLayer::attn);
    let widest = |f: fn(&DeviceAttn) -> usize| attn_layers().map(f).max().unwrap_or(0);
    let qd = widest(|a| a.desc.q_dim());
    let qkv_width = widest(DeviceAttn::qkv_width);
    let mix_width = (cfg.layers.iter())
        .map(LayerDesc::mixer_out_dim)
        .max()
        .unwrap_or(0);
    let inter = (cfg.layers.iter())
        .map(|l| l.mlp.intermediate)
        .max()
        .unwrap_or(0);
    let mut x = gpu.alloc_f32(t * h)?;
    // The output projections' products, in the compute dtype (as
    // transformers rounds each projection): half the bytes of f32 through
    // the GEMM's store and the residual norm's load, twice per layer.
    let mut delta = DevTensor::alloc(gpu, dt, t * h)?;
    // In the compute dtype, as transformers hands attention its queries.
    let mut q = DevTensor::alloc(gpu, dt, t * qd)?;
    let mut gate = (attn_layers().any(|a| a.desc.output_gate))
        .then(|| gpu.alloc_f32(t * qd))
        .transpose()?;
    let mut attn = DevTensor::alloc(gpu, dt, t * mix_width)?;
    // K/V pools (`plan::kv_pools`): a layer whose K/V later layers read
    // (Gemma's KV sharing) keeps its own for the whole forward; the others
    // take turns in one.
    let pool_rows = batch.layout.pool_rows();
    let (kept_kvd, turns_kvd) = crate::backend::plan::kv_pools(cfg);
    let pools = |kvd: usize| -> Result<(DevTensor, DevTensor)> {
        let pool = || DevTensor::alloc(gpu, dt, pool_rows * kvd);
        Ok((pool()?, pool()?))
    };
    let mut kept = (kept_kvd.into_iter())
        .map(|kvd| kvd.map(pools).transpose())
        .collect::<Result<Vec<_>>>()?;
    let (mut k_pool, mut v_pool) = pools(turns_kvd)?;
    let c = LINEAR_CHUNK.min(t);
    let mut normed = DevTensor::alloc(gpu, dt, c * h)?;
    // In the compute dtype, as transformers rounds each projection.
    let mut qkv = DevTensor::alloc(gpu, dt, c * qkv_width)?;
    // In the compute dtype: transformers rounds both projections to it, and
    // at 2·inter wide this is the forward's largest write and read.
    let mut gate_up = DevTensor::alloc(gpu, dt, c * 2 * inter)?;
    let mut act = DevTensor::alloc(gpu, dt, c * inter)?;
    let first_dn = m.layers.iter().find_map(|l| match &l.mixer {
        DeviceMixer::DeltaNet(d) => Some(d.desc),
        DeviceMixer::Attention(_) => None,
    });
    let mut dn_scratch = match first_dn {
        Some(d) => {
            let cache = match kv.as_ref() {
                Some((store, copies)) => Some(RecurrentCopies::new(
                    gpu,
                    copies,
                    d.conv_kernel,
                    t,
                    store.capacity(),
                )?),
                None => None,
            };
            Some(DeltaNetScratch::new(
                gpu,
                &d,
                &batch.layout,
                cache,
                kernels.rule,
            )?)
        }
        None => None,
    };

    gpu.embedding(
        &batch.tokens.as_view(),
        &m.embed.all(),
        h,
        m.embed_scale,
        &mut x.as_view_mut(),
    )?;
    // Gemma: the scaled embedding in the compute dtype, the per-layer
    // inputs' GEMM operand for every layer.
    let mut ple = match &m.ple {
        Some(p) => {
            let mut emb = DevTensor::alloc(gpu, dt, t * h)?;
            let all = &mut x.as_view_mut();
            gpu.residual_rmsnorm(all, None, None, None, &mut emb.all_mut(), h, eps)?;
            Some((p, emb, PleScratch::new(gpu, p, c)?))
        }
        None => None,
    };
    // `delta` holds the previous layer's last output, not yet added to x:
    // the norm it passes first, if any, and the factor x is then scaled by
    // (Gemma's layer scalar).
    let mut pending: Option<(Option<&CudaSlice<f32>>, f32)> = None;
    let chunks: Vec<(usize, usize)> = (0..t).step_by(c).map(|a| (a, (a + c).min(t))).collect();

    for (li, l) in m.layers.iter().enumerate() {
        // Rows [r0, r1) of the mixer's input into `normed`: x += the pending
        // delta ([normed], [scaled]), then [the input norm].
        let mixer_input = |x: &mut CudaSlice<f32>, normed: &mut DevTensor, r0: usize, r1: usize| {
            let d = delta.view(r0 * h, r1 * h)?;
            let dn = pending.and_then(|p| p.0).map(|w| w.as_view());
            gpu.residual_rmsnorm(
                &mut sub_mut(x, r0 * h, r1 * h)?,
                pending.map(|p| (&d, dn.as_ref(), p.1)),
                l.attn_in_norm.as_ref().map(|w| w.as_view()).as_ref(),
                None,
                &mut normed.view_mut(0, (r1 - r0) * h)?,
                h,
                eps,
            )
        };
        let (out_proj, width) = match &l.mixer {
            DeviceMixer::DeltaNet(dn) => {
                let s = dn_scratch
                    .as_mut()
                    .expect("allocated for a model with DeltaNet layers");
                for &(r0, r1) in &chunks {
                    mixer_input(&mut x, &mut normed, r0, r1)?;
                    let input = normed.view(0, (r1 - r0) * h)?;
                    gpu.part(Part::Gemm, || s.project(gpu, dn, &input, r0, r1))?;
                }
                let store = match kv.as_mut() {
                    Some((store, _)) => Some(store.recurrent[li].as_mut().ok_or_else(|| {
                        crate::Error::Backend(format!(
                            "cuda: layer {li} keeps no state in the cache"
                        ))
                    })?),
                    None => None,
                };
                let mut mixed = attn.view_mut(0, t * dn.desc.value_dim())?;
                gpu.part(Part::DeltaRule, || {
                    s.mix(gpu, dn, batch, store, &mut mixed, eps)
                })?;
                (&dn.out, dn.desc.value_dim())
            }
            DeviceMixer::Attention(a) => {
                let d = &a.desc;
                let (qd, kvd) = (d.q_dim(), d.kv_dim());
                let own = d.kv_from.is_none();
                let shape = AttnShape::of(d);
                // A sharing layer projects q alone and writes no K/V.
                let rope_shape = AttnShape {
                    num_kv_heads: if own { d.num_kv_heads } else { 0 },
                    ..shape
                };
                let rope = &m.ropes[a.rope];
                let (kp, vp) = match kept[d.kv_from.unwrap_or(li)].as_mut() {
                    Some((k, v)) => (k, v),
                    None => (&mut k_pool, &mut v_pool),
                };
                let pool_len = pool_rows * kvd;
                let written = if own { pool_len } else { 0 };
                let width = a.qkv_width();
                for &(r0, r1) in &chunks {
                    let n = r1 - r0;
                    mixer_input(&mut x, &mut normed, r0, r1)?;
                    gpu.part(Part::Gemm, || {
                        let x = normed.view(0, n * h)?;
                        let mut out = qkv.view_mut(0, n * width)?;
                        gpu.matmul_wt_to(&x, &a.qkv.all(), &mut out, n, width, h, width)
                    })?;
                    let bias = a.qkv_bias.as_ref().map(|b| b.as_view());
                    let (qn, kn) = (a.q_norm.as_ref(), a.k_norm.as_ref());
                    let mut gate_rows = match gate.as_mut() {
                        Some(g) if d.output_gate => Some(sub_mut(g, r0 * qd, r1 * qd)?),
                        _ => None,
                    };
                    gpu.qkv_rope(
                        &qkv.view(0, n * width)?,
                        bias.as_ref(),
                        (
                            qn.map(|w| w.as_view()).as_ref(),
                            kn.map(|w| w.as_view()).as_ref(),
                        ),
                        &sub(&batch.pos, r0, r1)?,
                        &sub(&batch.slots, r0, r1)?,
                        (&rope.0.as_view(), rope.1),
                        &mut q.view_mut(r0 * qd, r1 * qd)?,
                        gate_rows.as_mut(),
                        &mut kp.view_mut(0, written)?,
                        &mut vp.view_mut(0, written)?,
                        rope_shape,
                        d.v_norm,
                        eps,
                    )?;
                }

                let block = KV_BLOCK * kvd;
                // A sharing layer's source loaded its hits and keeps its fills.
                let cache = kv.as_mut().filter(|_| own);
                if let Some((store, copies)) = cache {
                    store.load_hits(gpu, li, (&mut *kp, &mut *vp), copies, block)?;
                }
                gpu.part(Part::Attention, || {
                    gpu.paged_attention(
                        kernels.attention,
                        &q.view(0, t * qd)?,
                        &kp.view(0, pool_len)?,
                        &vp.view(0, pool_len)?,
                        &batch.block_table.as_view(),
                        &batch.seq_start.as_view(),
                        &batch.past.as_view(),
                        &batch.tiles.as_view(),
                        batch.layout.max_blocks,
                        &mut attn.view_mut(0, t * qd)?,
                        shape,
                        0,
                    )
                })?;
                if let Some((store, copies)) = kv.as_mut().filter(|_| own) {
                    store.keep_fills(gpu, li, (&*kp, &*vp), copies, block)?;
                }
                if let (Some(g), true) = (gate.as_ref(), d.output_gate) {
                    gpu.gate_sigmoid_mul(&mut attn.view_mut(0, t * qd)?, &sub(g, 0, t * qd)?, qd)?;
                }
                (&a.o, qd)
            }
        };

        let inter = l.mlp.intermediate;
        for &(r0, r1) in &chunks {
            let n = r1 - r0;
            gpu.part(Part::Gemm, || {
                let a = attn.view(r0 * width, r1 * width)?;
                let mut d = delta.view_mut(r0 * h, r1 * h)?;
                gpu.matmul_wt_to(&a, &out_proj.all(), &mut d, n, h, width, h)
            })?;
            let dn = l.attn_out_norm.as_ref().map(|w| w.as_view());
            gpu.residual_rmsnorm(
                &mut sub_mut(&mut x, r0 * h, r1 * h)?,
                Some((&delta.view(r0 * h, r1 * h)?, dn.as_ref(), 1.0)),
                l.mlp_in_norm.as_ref().map(|w| w.as_view()).as_ref(),
                None,
                &mut normed.view_mut(0, n * h)?,
                h,
                eps,
            )?;
            gpu.part(Part::Gemm, || {
                let (x, w) = (normed.view(0, n * h)?, l.gate_up.all());
                let mut out = gate_up.view_mut(0, n * 2 * inter)?;
                gpu.matmul_wt_to(&x, &w, &mut out, n, 2 * inter, h, 2 * inter)
            })?;
            gpu.act_mul(
                l.mlp.act,
                &gate_up.view(0, n * 2 * inter)?,
                &mut act.view_mut(0, n * inter)?,
                inter,
            )?;
            gpu.part(Part::Gemm, || {
                let a = act.view(0, n * inter)?;
                let mut d = delta.view_mut(r0 * h, r1 * h)?;
                gpu.matmul_wt_to(&a, &l.down.all(), &mut d, n, h, inter, h)
            })?;
            if let (Some(lp), Some((p, emb, s))) = (&l.ple, ple.as_mut()) {
                // x += [norm](mlp), in place: the per-layer input's gate reads it.
                let dn = l.mlp_out_norm.as_ref().map(|w| w.as_view());
                gpu.residual_rmsnorm(
                    &mut sub_mut(&mut x, r0 * h, r1 * h)?,
                    Some((&delta.view(r0 * h, r1 * h)?, dn.as_ref(), 1.0)),
                    None,
                    None,
                    &mut normed.view_mut(0, n * h)?,
                    h,
                    eps,
                )?;
                per_layer_input(
                    gpu,
                    p,
                    lp,
                    li,
                    &batch.tokens,
                    emb,
                    &normed.view(0, n * h)?,
                    (r0, r1),
                    s,
                    &mut delta.view_mut(r0 * h, r1 * h)?,
                    eps,
                )?;
            }
        }
        let out_norm = match (&l.ple, &ple) {
            (Some(lp), Some(_)) => Some(&lp.norm),
            _ => l.mlp_out_norm.as_ref(),
        };
        pending = Some((out_norm, l.scalar));
    }

    let d = delta.all();
    let dn = pending.and_then(|p| p.0).map(|w| w.as_view());
    gpu.residual_rmsnorm(
        &mut x.as_view_mut(),
        pending.map(|p| (&d, dn.as_ref(), p.1)),
        Some(&m.final_norm.as_view()),
        Some(&rows.as_view()),
        &mut hidden.all_mut(),
        h,
        eps,
    )?;
    Ok(hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_tiles_are_listed_heaviest_first_and_cover_every_query_once() {
        let b = PagedBatch::with_past(&[(0, 150), (64, 70), (0, 10)]);
        let tiles: Vec<(i32, i32)> = b.tiles.chunks(2).map(|t| (t[0], t[1])).collect();
        // Keys seen by each tile's last query: 150; 64 + 70 = 134; 128 and
        // 64 + 64 = 128 (ties by sequence); 64; 10.
        assert_eq!(tiles, [(0, 128), (1, 64), (0, 64), (1, 0), (0, 0), (2, 0)]);
    }
}
