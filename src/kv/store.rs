//! Block storage of one model on the CPU, in the paged layout the CUDA
//! backend shares (module doc of [`super`]): per layer one K and one V arena
//! `[blocks, block_size, kv_heads, head_dim]` f32, plus the final-norm hidden
//! state of each block's last token `[blocks, hidden]`.
//!
//! Arenas grow on demand as the pool hands out new block ids (in steps of a
//! quarter of their size, never past the capacity), so an idle cache costs
//! nothing and a full one exactly its budget.

use super::BlockId;
use crate::model::Config;

pub struct ModelKv {
    block_size: usize,
    /// Floats per token per layer of K (and of V): `kv_heads · head_dim`.
    kv_dim: usize,
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
            kv_dim: cfg.num_kv_heads * cfg.head_dim,
            hidden: cfg.hidden_size,
            capacity,
            blocks: 0,
            k: vec![Vec::new(); cfg.num_layers],
            v: vec![Vec::new(); cfg.num_layers],
            last_hidden: Vec::new(),
        }
    }

    /// Bytes one block of this model takes: K and V of every layer and one
    /// hidden state.
    pub fn bytes_per_block(cfg: &Config, block_size: usize) -> usize {
        let kv = 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim;
        (kv + cfg.hidden_size) * std::mem::size_of::<f32>()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Bytes held now.
    pub fn bytes_allocated(&self) -> usize {
        let per = 2 * self.k.len() * self.block_size * self.kv_dim + self.hidden;
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
        let kv = self.block_size * self.kv_dim;
        for arena in self.k.iter_mut().chain(self.v.iter_mut()) {
            arena.reserve_exact(target * kv - arena.len());
            arena.resize(target * kv, 0.0);
        }
        self.last_hidden
            .reserve_exact(target * self.hidden - self.last_hidden.len());
        self.last_hidden.resize(target * self.hidden, 0.0);
        self.blocks = target;
    }

    fn range(&self, id: BlockId) -> std::ops::Range<usize> {
        let n = self.block_size * self.kv_dim;
        id as usize * n..(id as usize + 1) * n
    }

    /// K of block `id` in `layer`: `[block_size, kv_heads · head_dim]`.
    pub fn k(&self, layer: usize, id: BlockId) -> &[f32] {
        &self.k[layer][self.range(id)]
    }
    pub fn v(&self, layer: usize, id: BlockId) -> &[f32] {
        &self.v[layer][self.range(id)]
    }
    pub fn k_mut(&mut self, layer: usize, id: BlockId) -> &mut [f32] {
        let r = self.range(id);
        &mut self.k[layer][r]
    }
    pub fn v_mut(&mut self, layer: usize, id: BlockId) -> &mut [f32] {
        let r = self.range(id);
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
        let n = self.block_size * self.kv_dim;
        for (i, &id) in blocks.iter().enumerate() {
            k_out[i * n..(i + 1) * n].copy_from_slice(self.k(layer, id));
            v_out[i * n..(i + 1) * n].copy_from_slice(self.v(layer, id));
        }
    }
}
