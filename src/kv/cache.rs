//! The prefix cache of a policy/reference pair: one [`BlockPool`] (the index
//! both models share), one [`ModelKv`] store per model, and the per-token
//! scores of every cached block; plus the batch planner that admits requests
//! in waves so that shared prefixes are computed once and then hit.
//!
//! A backend scores a batch as (`backend::plan::in_waves`, shared by the
//! backends): sort the requests by tokens, then repeatedly
//! [`PairCache::admit`] a wave (look up, reference the hit, allocate blocks
//! for the new full blocks), run the forward over the wave's new tokens
//! writing K/V into those blocks, fill their hidden states and token scores
//! (`backend::plan::WavePlan` says which rows), and [`PairCache::commit`]
//! the wave (index the new blocks, release all).

use std::hash::{Hash, Hasher};

use super::pool::{BlockId, BlockPool, Committed};
use super::store::{BlockStore, ModelKv};
use super::{CacheStats, KvOptions};
use crate::model::Model;
use crate::model::config::{Config, DELTANET_CHUNK};
use crate::score::SeqRequest;

/// Scores kept per cached token: log π_θ, log π_ref, policy entropy,
/// self-certainty (NaN: not computed yet).
pub type TokenScore = [f32; 4];

/// A request admitted into a wave.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Index of the request in the batch.
    pub seq: usize,
    /// Cached blocks holding positions `[0, hit.len() · block_size)` (referenced).
    pub hit: Vec<BlockId>,
    /// Pending blocks (referenced) for the next full blocks, in order:
    /// `fill[j]` receives block `hit.len() + j` of the sequence. Shorter
    /// than the sequence's uncached full blocks when the budget is spent.
    pub fill: Vec<BlockId>,
}

/// The index, both models' block stores (`S`: the CPU's [`ModelKv`], or a
/// backend's device-resident store) and the token scores.
pub struct PairCache<S = ModelKv> {
    pool: BlockPool,
    pub policy: S,
    pub reference: S,
    /// `[blocks, block_size]` token scores.
    scores: Vec<TokenScore>,
    budget_bytes: usize,
}

/// Identity of a pair, the root of every key: model directories and shapes.
pub fn fingerprint(policy: &Model, reference: &Model) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for m in [policy, reference] {
        m.dir.hash(&mut h);
        let c = &m.config;
        format!("{c:?}").hash(&mut h);
        (c.vocab_size, m.weights.mapped_bytes()).hash(&mut h);
    }
    h.finish()
}

/// The block size a cache of a pair of these configs uses for `requested`:
/// itself, or for a pair with recurrent layers the next multiple of the
/// delta rule's chunk (module doc of [`super`]). Every backend's cache.
pub fn block_size_for(policy: &Config, reference: &Config, requested: usize) -> usize {
    let bs = requested.max(1);
    if policy.is_hybrid() || reference.is_hybrid() {
        bs.div_ceil(DELTANET_CHUNK) * DELTANET_CHUNK
    } else {
        bs
    }
}

impl PairCache<ModelKv> {
    /// A cache in host memory (the CPU backend's).
    pub fn new(policy: &Model, reference: &Model, opts: KvOptions) -> PairCache {
        let bs = Self::block_size_for(policy, reference, opts.block_size);
        let capacity = Self::capacity(opts, bs, Self::store_bytes(policy, reference, bs));
        PairCache::with_stores(
            fingerprint(policy, reference),
            opts,
            bs,
            ModelKv::new(&policy.config, bs, capacity),
            ModelKv::new(&reference.config, bs, capacity),
            capacity,
        )
    }

    /// The block size a cache of this pair uses for `requested`: itself,
    /// or for a pair with recurrent layers the next multiple of the delta
    /// rule's chunk (module doc of [`super`]).
    pub fn block_size_for(policy: &Model, reference: &Model, requested: usize) -> usize {
        block_size_for(&policy.config, &reference.config, requested)
    }

    /// Bytes one block of blocks of `bs` tokens costs both models' stores.
    fn store_bytes(policy: &Model, reference: &Model, bs: usize) -> usize {
        ModelKv::bytes_per_block(&policy.config, bs)
            + ModelKv::bytes_per_block(&reference.config, bs)
    }

    /// Bytes one block costs the pair (K/V, recurrent snapshots and hidden
    /// state of both models, token scores), for the block size the cache
    /// uses for `block_size` ([`PairCache::block_size_for`]).
    pub fn bytes_per_block(policy: &Model, reference: &Model, block_size: usize) -> usize {
        let bs = Self::block_size_for(policy, reference, block_size);
        Self::store_bytes(policy, reference, bs) + bs * std::mem::size_of::<TokenScore>()
    }
}

impl<S: BlockStore> PairCache<S> {
    /// Blocks of `block_size` tokens that `opts`' budget holds when the
    /// stores cost `store_bytes` per block for the pair (the token scores
    /// are added here).
    pub fn capacity(opts: KvOptions, block_size: usize, store_bytes: usize) -> usize {
        let per_block = store_bytes + block_size * std::mem::size_of::<TokenScore>();
        opts.budget_bytes / per_block.max(1)
    }

    /// A cache for the pair named by `fingerprint` (see [`fingerprint`]) over
    /// stores made for `capacity` blocks of `block_size` tokens
    /// ([`PairCache::capacity`]).
    pub fn with_stores(
        fingerprint: u64,
        opts: KvOptions,
        block_size: usize,
        policy: S,
        reference: S,
        capacity: usize,
    ) -> PairCache<S> {
        PairCache {
            pool: BlockPool::new(block_size.max(1), capacity, fingerprint),
            policy,
            reference,
            scores: Vec::new(),
            budget_bytes: opts.budget_bytes,
        }
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Scores of position `slot` of block `id`.
    pub fn score(&self, id: BlockId, slot: usize) -> TokenScore {
        self.scores[id as usize * self.block_size() + slot]
    }

    pub fn set_score(&mut self, id: BlockId, slot: usize, s: TokenScore) {
        let bs = self.block_size();
        self.scores[id as usize * bs + slot] = s;
    }

    fn allocate(&mut self) -> Option<BlockId> {
        let id = self.pool.allocate()?;
        let (n, bs) = (self.pool.allocated(), self.block_size());
        self.policy.ensure(n);
        self.reference.ensure(n);
        if self.scores.len() < n * bs {
            self.scores.resize(n * bs, [f32::NAN; 4]);
        }
        self.scores[id as usize * bs..(id as usize + 1) * bs].fill([f32::NAN; 4]);
        Some(id)
    }

    /// How many blocks of `hit` the request can use: up to the block holding
    /// the first wanted position without a cached score (that position is
    /// then recomputed, or scored from the previous block's last hidden state
    /// when it opens its block).
    fn usable(&self, hit: &[BlockId], r: &SeqRequest) -> usize {
        let bs = self.block_size();
        (1..hit.len() * bs)
            .find(|&t| r.wants(t) && self.score(hit[t / bs], t % bs)[0].is_nan())
            .map_or(hit.len(), |t| t / bs)
    }

    /// Admit the requests `order` (indices into `batch`, sorted by tokens)
    /// into one wave: look each up, reference its hit and allocate blocks for
    /// its new full blocks. A request sharing a not-yet-cached full block with
    /// the wave's previous member, which that member will cache, is deferred
    /// (returned second): it will hit the block in the next wave instead of
    /// computing it again.
    pub fn admit(&mut self, batch: &[SeqRequest], order: &[usize]) -> (Vec<Admitted>, Vec<usize>) {
        let bs = self.block_size();
        let mut wave: Vec<Admitted> = Vec::new();
        let mut deferred = Vec::new();
        for &i in order {
            let tokens = &batch[i].token_ids;
            let mut hit = self.pool.lookup(tokens);
            hit.truncate(self.usable(&hit, &batch[i]));
            // Sorted order: the previous member shares the longest prefix.
            // Defer when it will cache more of that prefix than is cached now.
            if let Some(prev) = wave.last() {
                let other = &batch[prev.seq].token_ids;
                let shared = tokens.iter().zip(other).take_while(|(a, b)| a == b).count();
                let reach = (shared / bs).min(prev.hit.len() + prev.fill.len());
                if reach > hit.len() {
                    deferred.push(i);
                    continue;
                }
            }
            self.pool.acquire(&hit);
            let mut fill = Vec::new();
            for _ in hit.len()..tokens.len() / bs {
                match self.allocate() {
                    Some(id) => fill.push(id),
                    None => break,
                }
            }
            wave.push(Admitted { seq: i, hit, fill });
        }
        (wave, deferred)
    }

    /// Index the wave's filled blocks (their K/V, last hidden states and
    /// scores written) and release every block the wave referenced.
    pub fn commit(&mut self, batch: &[SeqRequest], wave: &[Admitted]) {
        let bs = self.block_size();
        for a in wave {
            let tokens = &batch[a.seq].token_ids;
            let mut held = a.hit.clone();
            let mut parent = a.hit.last().copied();
            for (j, &id) in a.fill.iter().enumerate() {
                let b = a.hit.len() + j;
                let c = self.pool.commit(id, parent, &tokens[b * bs..(b + 1) * bs]);
                if let Committed::Existing(e) = c {
                    // Same prefix cached meanwhile: keep any score it lacks.
                    // (`id` is back on the free list but not yet reused.)
                    for slot in 0..bs {
                        let (mine, theirs) = (self.score(id, slot), self.score(e, slot));
                        if theirs[0].is_nan() && !mine[0].is_nan() {
                            self.set_score(e, slot, mine);
                        }
                    }
                }
                held.push(c.id());
                parent = Some(c.id());
            }
            self.pool.release(&held);
        }
    }

    /// Release a wave whose forward failed (its blocks stay uncommitted).
    pub fn abandon(&mut self, wave: &[Admitted]) {
        for a in wave {
            self.pool.release(&a.hit);
            self.pool.release(&a.fill);
        }
    }

    /// Gauges and eviction count (the backend adds its token counters).
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            evictions: self.pool.evictions(),
            blocks_cached: self.pool.cached(),
            blocks_capacity: self.pool.capacity(),
            block_size: self.block_size(),
            bytes_allocated: self.policy.bytes_allocated()
                + self.reference.bytes_allocated()
                + self.scores.len() * std::mem::size_of::<TokenScore>(),
            budget_bytes: self.budget_bytes,
            ..CacheStats::default()
        }
    }
}
