//! Block storage of one model on the CPU, in the paged layout of
//! `kernels/attention.cu` (module doc of [`super`]): per layer one K and one
//! V arena `[blocks, block_size, kv_heads, head_dim]` f32 (layers of
//! different head dims have arenas of different widths; a layer reading
//! another layer's K/V has none), plus the final-norm hidden state of each
//! block's last token `[blocks, hidden]`.
//!
//! Arenas grow on demand as the pool hands out new block ids (in steps of a
//! quarter of their size, never past the capacity), so an idle cache costs
//! nothing and a full one exactly its budget.

use super::BlockId;
use crate::model::Config;

pub struct ModelKv {
    block_size: usize,
    /// Per layer, floats per token of K (and of V): `kv_heads · head_dim`,
    /// 0 for layers that share another layer's K/V.
    kv_dims: Vec<usize>,
    hidden: usize,
    capacity: usize,
    /// Blocks every arena holds now.
    blocks: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    last_hidden: Vec<f32>,
}

impl ModelKv {
    pub fn new(cfg: &Config, block_size: usize, capacity: usize) -> ModelKv {
        ModelKv {
            block_size,
            kv_dims: Self::layer_dims(cfg),
            hidden: cfg.hidden_size,
            capacity,
            blocks: 0,
            k: vec![Vec::new(); cfg.num_layers],
            v: vec![Vec::new(); cfg.num_layers],
            last_hidden: Vec::new(),
        }
    }

    /// Per layer, the K (and V) floats per token it stores.
    pub fn layer_dims(cfg: &Config) -> Vec<usize> {
        cfg.layers
            .iter()
            .map(|l| {
                if l.attn.kv_from.is_some() {
                    0
                } else {
                    l.attn.kv_dim()
                }
            })
            .collect()
    }

    /// Bytes one block of this model takes: K and V of every layer and one
    /// hidden state.
    pub fn bytes_per_block(cfg: &Config, block_size: usize) -> usize {
        let kv: usize = Self::layer_dims(cfg)
            .iter()
            .map(|d| 2 * block_size * d)
            .sum();
        (kv + cfg.hidden_size) * std::mem::size_of::<f32>()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn kv_dims(&self) -> &[usize] {
        &self.kv_dims
    }

    /// Bytes held now.
    pub fn bytes_allocated(&self) -> usize {
        let kv: usize = self.kv_dims.iter().map(|d| 2 * self.block_size * d).sum();
        self.blocks * (kv + self.hidden) * std::mem::size_of::<f32>()
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
