//! Block storage of one model on the CPU, in the paged layout of
//! `kernels/attention.cu` (module doc of [`super`]): per layer one K and one
//! V arena `[blocks, block_size, kv_heads, head_dim]` f32 (layers of
//! different head dims have arenas of different widths; a layer reading
//! another layer's K/V has none), plus the final-norm hidden state of each
//! block's last token `[blocks, hidden]`.
//!
//! A recurrent (gated-DeltaNet) layer has no K/V; it keeps per block a
//! snapshot of the sequence's recurrent state *after the block's last
//! token*: `[v_heads, k_head_dim, v_head_dim]` f32, then the convolution's
//! input tail `[conv_kernel − 1, conv_dim]` (see [`super`] for why blocks of
//! such models are whole chunks).
//!
//! Arenas grow on demand as the pool hands out new block ids (in steps of a
//! quarter of their size, never past the capacity), so an idle cache costs
//! nothing and a full one exactly its budget.

use super::BlockId;
use crate::model::Config;

/// What the prefix cache asks of a model's block storage, whatever memory
/// it lives in: room for the block ids the pool hands out, and its size.
pub trait BlockStore {
    /// Make room for block ids `< blocks` (never more than the capacity the
    /// store was made for).
    fn ensure(&mut self, blocks: usize);
    /// Bytes held now.
    fn bytes_allocated(&self) -> usize;
}

impl BlockStore for ModelKv {
    fn ensure(&mut self, blocks: usize) {
        ModelKv::ensure(self, blocks)
    }
    fn bytes_allocated(&self) -> usize {
        ModelKv::bytes_allocated(self)
    }
}

pub struct ModelKv {
    block_size: usize,
    /// Per layer, floats per token of K (and of V): `kv_heads · head_dim`,
    /// 0 for layers that share another layer's K/V.
    kv_dims: Vec<usize>,
    /// Per layer, floats of the recurrent snapshot per block (0 for attention).
    state_dims: Vec<usize>,
    hidden: usize,
    capacity: usize,
    /// Blocks every arena holds now.
    blocks: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    states: Vec<Vec<f32>>,
    last_hidden: Vec<f32>,
}

impl ModelKv {
    pub fn new(cfg: &Config, block_size: usize, capacity: usize) -> ModelKv {
        ModelKv {
            block_size,
            kv_dims: Self::layer_dims(cfg),
            state_dims: Self::layer_state_dims(cfg),
            hidden: cfg.hidden_size,
            capacity,
            blocks: 0,
            k: vec![Vec::new(); cfg.num_layers],
            v: vec![Vec::new(); cfg.num_layers],
            states: vec![Vec::new(); cfg.num_layers],
            last_hidden: Vec::new(),
        }
    }

    /// Per layer, the K (and V) floats per token it stores.
    pub fn layer_dims(cfg: &Config) -> Vec<usize> {
        cfg.layers
            .iter()
            .map(|l| match l.attn() {
                Some(a) if a.kv_from.is_none() => a.kv_dim(),
                _ => 0,
            })
            .collect()
    }

    /// Per layer, the floats of the recurrent snapshot a block holds: state
    /// and convolution tail of a DeltaNet layer, 0 for attention.
    pub fn layer_state_dims(cfg: &Config) -> Vec<usize> {
        cfg.layers
            .iter()
            .map(|l| {
                l.deltanet()
                    .map_or(0, |d| d.state_floats() + d.conv_tail_floats())
            })
            .collect()
    }

    /// Floats of one block: K and V of every attention layer, the snapshots
    /// of every recurrent layer, one hidden state.
    fn floats_per_block(
        kv_dims: &[usize],
        state_dims: &[usize],
        bs: usize,
        hidden: usize,
    ) -> usize {
        let kv: usize = kv_dims.iter().map(|d| 2 * bs * d).sum();
        kv + state_dims.iter().sum::<usize>() + hidden
    }

    /// Bytes one block of this model takes: K and V of every attention
    /// layer, the recurrent snapshot of every DeltaNet layer and one hidden
    /// state.
    pub fn bytes_per_block(cfg: &Config, block_size: usize) -> usize {
        let (kv, st) = (Self::layer_dims(cfg), Self::layer_state_dims(cfg));
        Self::floats_per_block(&kv, &st, block_size, cfg.hidden_size) * std::mem::size_of::<f32>()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn kv_dims(&self) -> &[usize] {
        &self.kv_dims
    }

    pub fn state_dims(&self) -> &[usize] {
        &self.state_dims
    }

    /// Bytes held now.
    pub fn bytes_allocated(&self) -> usize {
        let per = Self::floats_per_block(
            &self.kv_dims,
            &self.state_dims,
            self.block_size,
            self.hidden,
        );
        self.blocks * per * std::mem::size_of::<f32>()
    }

    /// Make room for block ids `< blocks`.
    pub fn ensure(&mut self, blocks: usize) {
        if blocks <= self.blocks {
            return;
        }
        let target = (self.blocks + self.blocks / 4 + 8)
            .max(blocks)
            .min(self.capacity.max(blocks));
        for (layer, &d) in self.kv_dims.iter().enumerate() {
            let kv = self.block_size * d;
            for arena in [&mut self.k[layer], &mut self.v[layer]] {
                arena.reserve_exact(target * kv - arena.len());
                arena.resize(target * kv, 0.0);
            }
        }
        for (arena, &d) in self.states.iter_mut().zip(&self.state_dims) {
            arena.reserve_exact(target * d - arena.len());
            arena.resize(target * d, 0.0);
        }
        self.last_hidden
            .reserve_exact(target * self.hidden - self.last_hidden.len());
        self.last_hidden.resize(target * self.hidden, 0.0);
        self.blocks = target;
    }

    fn range(&self, layer: usize, id: BlockId) -> std::ops::Range<usize> {
        let n = self.block_size * self.kv_dims[layer];
        id as usize * n..(id as usize + 1) * n
    }

    /// K of block `id` in `layer`: `[block_size, kv_heads · head_dim]`.
    pub fn k(&self, layer: usize, id: BlockId) -> &[f32] {
        &self.k[layer][self.range(layer, id)]
    }
    pub fn v(&self, layer: usize, id: BlockId) -> &[f32] {
        &self.v[layer][self.range(layer, id)]
    }
    pub fn k_mut(&mut self, layer: usize, id: BlockId) -> &mut [f32] {
        let r = self.range(layer, id);
        &mut self.k[layer][r]
    }
    pub fn v_mut(&mut self, layer: usize, id: BlockId) -> &mut [f32] {
        let r = self.range(layer, id);
        &mut self.v[layer][r]
    }

    /// Recurrent snapshot of `layer` after block `id`'s last token: state
    /// `[v_heads, k_head_dim, v_head_dim]`, then the convolution tail.
    pub fn state(&self, layer: usize, id: BlockId) -> &[f32] {
        let d = self.state_dims[layer];
        &self.states[layer][id as usize * d..(id as usize + 1) * d]
    }
    pub fn state_mut(&mut self, layer: usize, id: BlockId) -> &mut [f32] {
        let d = self.state_dims[layer];
        &mut self.states[layer][id as usize * d..(id as usize + 1) * d]
    }

    /// Final-norm hidden state of block `id`'s last token: `[hidden]`.
    pub fn last_hidden(&self, id: BlockId) -> &[f32] {
        &self.last_hidden[id as usize * self.hidden..(id as usize + 1) * self.hidden]
    }
    pub fn last_hidden_mut(&mut self, id: BlockId) -> &mut [f32] {
        &mut self.last_hidden[id as usize * self.hidden..(id as usize + 1) * self.hidden]
    }

    /// Copy the K and V rows of `blocks` (a sequence's block table) into
    /// `k_out`/`v_out` (`[blocks · block_size, kv_dim]` each, contiguous):
    /// the CPU twin of a paged-attention kernel's block-table reads.
    pub fn gather(&self, layer: usize, blocks: &[BlockId], k_out: &mut [f32], v_out: &mut [f32]) {
        let n = self.block_size * self.kv_dims[layer];
        for (i, &id) in blocks.iter().enumerate() {
            k_out[i * n..(i + 1) * n].copy_from_slice(self.k(layer, id));
            v_out[i * n..(i + 1) * n].copy_from_slice(self.v(layer, id));
        }
    }
}
