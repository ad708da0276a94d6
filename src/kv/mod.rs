//! Shared KV-prefix cache: score step t+1 of a trajectory without recomputing
//! steps 1..t, and share a task prompt across N rollouts, for both models of
//! the pair at once.
//!
//! # Design
//!
//! Follows vLLM v1's *block-granular prefix caching*: a sequence is cut into
//! full blocks of `block_size` tokens and each full block is identified by its
//! tokens *and* everything before it. vLLM hashes the chain
//! (`hash(parent_hash, tokens)`); here the key is `(parent block id, tokens)`
//! ([`pool::BlockPool`]), which makes a hit exact rather than probabilistic: two
//! keys are equal iff the whole prefixes are equal. The price is that a block
//! may only be evicted once it has no cached children (leaves first), which
//! is what LRU over a prefix tree does anyway (a child is always used after its
//! parent), so the index is a block-granular radix tree with LRU leaf eviction.
//!
//! Why blocks and not SGLang's token-granular radix tree: the block is the unit
//! of the paged KV layout that the CUDA paged-attention kernel reads through a
//! block table, of reference counting and of eviction, and lookups are one hash
//! probe per block. The price of granularity is that the partial last block of
//! a sequence is recomputed (at most `block_size − 1` tokens per request).
//!
//! One index serves both models: a block id names the policy's K/V of that
//! block in the policy store *and* the reference's K/V in the reference store
//! ([`store::ModelKv`]), so a hit is a hit for the pair. The root of every chain
//! carries the pair's fingerprint (model directories and shapes), so the model
//! identity is part of every key.
//!
//! # Exactness at the boundary
//!
//! A token needs the hidden state of the position before it. Each block keeps,
//! besides its K/V, the final-norm hidden state of its last token for both
//! models (the row that predicts the first token after the block) and the
//! per-token scores already computed for its positions (log-probs of both
//! models, policy entropy and self-certainty; NaN where never asked for). A
//! request whose wanted positions inside the cached prefix lack a score uses
//! the hit only up to the block holding the first such position, so every
//! wanted position gets its log-prob and cache-on equals cache-off.
//!
//! # Recurrent layers (hybrid models)
//!
//! A gated-DeltaNet layer (Qwen 3.5) keeps no per-token K/V: what a
//! continuation needs from the prefix is the layer's recurrent state and
//! the last `conv_kernel − 1` inputs of its convolution, at the prefix's end.
//! Each block of such a model carries that snapshot, per DeltaNet layer and
//! per model, taken after the block's last token ([`store::ModelKv::state`]);
//! it is written when the block is filled, counted in
//! [`PairCache::bytes_per_block`] (so in the budget) and evicted with the
//! block. A hit of `n` blocks starts the new tokens from block `n − 1`'s
//! snapshot.
//!
//! Reusable boundaries are the delta rule's chunk boundaries: the block size
//! of a pair with DeltaNet layers is rounded up to a multiple of the chunk
//! (64 tokens, [`crate::model::config::DELTANET_CHUNK`];
//! [`PairCache::block_size_for`]). Why: the chunked form is not bitwise the
//! same computation when a chunk is cut at another place, and the backends
//! chunk at absolute multiples of 64, so only a state snapshotted at such a
//! boundary continues exactly as the uncached forward does, which keeps
//! cache on = cache off exactly. One snapshot per block (rather than
//! 16-token blocks with a snapshot on every fourth) also keeps the budget
//! honest: a 9B model's snapshot (24 layers × 32 heads × 128 × 128 f32,
//! 48 MiB per model) dwarfs a block's K/V. The price is the partial last
//! block: up to 63 tokens of a request are recomputed instead of 15.
//!
//! # Block layout (the CUDA kernels' paged layout)
//!
//! Per model and per layer, K and V each live in one arena
//! `[num_blocks, block_size, num_kv_heads, head_dim]` (f32 on CPU, row-major),
//! so block `b`'s token `i` of kv head `h` starts at
//! `((b · block_size + i) · num_kv_heads + h) · head_dim`. A sequence's block
//! table is the list of block ids of its prefix in order; a paged-attention
//! kernel reads keys of position `p` from block `table[p / block_size]`, row
//! `p % block_size`. This is the pool layout of `kernels/attention.cu`
//! (`k_pool`/`v_pool` `[num_blocks · 16, kv_heads, head_dim]`, `block_table`
//! of pool blocks per sequence, `KV_BLOCK = 16` = [`DEFAULT_BLOCK_SIZE`]).
//! The CUDA backend keeps the same index over device-resident stores
//! (`backend::cuda::kv::DeviceKv`, the arenas in the model's dtype): a
//! wave copies its hit blocks into its paged pool and its filled blocks
//! back, per layer. Per layer the
//! arena width follows the layer's own K/V geometry (Gemma's full layers are
//! wider; layers sharing another layer's K/V have none). The last-token
//! hidden states are `[num_blocks, hidden]` per model, the token scores
//! `[num_blocks, block_size, 4]` for the pair. The CPU forward gathers a
//! sequence's cached blocks into a contiguous view per layer (one copy of
//! `block_size` rows per block) and runs the strided CPU attention over it.
//!
//! [`cache::PairCache`] ties pool and stores together (generic over the
//! store, [`store::BlockStore`]) and plans a batch:
//! requests are sorted by tokens and admitted in waves, so that sequences that
//! share a not-yet-cached prefix compute it once (first wave) and hit it
//! afterwards.

pub mod cache;
pub mod pool;
pub mod store;

pub use cache::{Admitted, PairCache};
pub use pool::{BlockId, BlockPool};
pub use store::{BlockStore, ModelKv};

/// Tokens per block (vLLM's default; the CUDA pool's block, [`crate::consts`]).
pub const DEFAULT_BLOCK_SIZE: usize = crate::consts::KV_BLOCK;

/// How the cache is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvOptions {
    /// Memory for K/V, hidden states and token scores of both models.
    pub budget_bytes: usize,
    pub block_size: usize,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            budget_bytes: default_budget_bytes(),
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

impl KvOptions {
    /// `mb` MiB, or the default budget when `None`.
    pub fn with_budget_mb(mb: Option<usize>) -> KvOptions {
        KvOptions {
            budget_bytes: mb.map_or_else(default_budget_bytes, |m| m.saturating_mul(1 << 20)),
            ..KvOptions::default()
        }
    }
}

/// A quarter of the memory available now, between 64 MiB and 16 GiB (1 GiB
/// where `/proc/meminfo` cannot be read).
pub fn default_budget_bytes() -> usize {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map(|kb| kb * 1024);
    match available {
        Some(b) => (b / 4).clamp(64 << 20, 16 << 30),
        None => 1 << 30,
    }
}

/// Counters of a backend's prefix cache since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Sequences looked up in the index.
    pub lookups: u64,
    /// Tokens whose K/V (both models) came from the cache.
    pub hit_tokens: u64,
    /// Tokens run through the forward of both models.
    pub computed_tokens: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Blocks holding cached prefixes now.
    pub blocks_cached: usize,
    /// Blocks the budget allows.
    pub blocks_capacity: usize,
    pub block_size: usize,
    /// Bytes the stores hold now (grown on demand, at most the budget).
    pub bytes_allocated: usize,
    pub budget_bytes: usize,
}

impl CacheStats {
    /// hit / (hit + computed); 0 before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hit_tokens + self.computed_tokens;
        if total == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / total as f64
        }
    }

    /// Counter differences `self − earlier` (gauges are kept from `self`).
    pub fn since(&self, earlier: &CacheStats) -> CacheStats {
        CacheStats {
            lookups: self.lookups - earlier.lookups,
            hit_tokens: self.hit_tokens - earlier.hit_tokens,
            computed_tokens: self.computed_tokens - earlier.computed_tokens,
            evictions: self.evictions - earlier.evictions,
            ..*self
        }
    }
}
