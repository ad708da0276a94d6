//! The block pool and prefix index: which block ids hold which token prefix,
//! who uses them, and which go first when memory runs out. Knows nothing of
//! the data (that is [`super::store`]); follows vLLM v1's block pool (free
//! list, reference counts, index of full blocks, LRU of unreferenced cached
//! blocks) with exact `(parent, tokens)` keys instead of chained hashes, so
//! eviction takes leaves only (see the module doc of [`super`]).
//!
//! A block's life: `allocate` (pending: referenced once, not in the index,
//! the caller fills its data) → `commit` (in the index; may turn out to be a
//! duplicate of a block committed meanwhile, then the pending one is freed and
//! the existing one returned, referenced) → `release` (unreferenced and a
//! leaf: evictable, least recently used first) → evicted on a later
//! `allocate`, or found again by `lookup` and re-`acquire`d.

use std::collections::{BTreeSet, HashMap};

/// Index of a block in the pool (and in every store of the pair).
pub type BlockId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Parent {
    /// First block of a sequence; the pair's fingerprint.
    Root(u64),
    Block(BlockId),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: Parent,
    tokens: Vec<u32>,
}

#[derive(Debug, Default)]
struct Meta {
    /// `Some` once committed (in the index).
    key: Option<Key>,
    refs: u32,
    /// Committed blocks whose parent this is.
    children: u32,
    last_used: u64,
}

/// What `commit` did with a pending block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The block is now in the index.
    New(BlockId),
    /// The same prefix was committed meanwhile: the pending block was freed
    /// and this one (now referenced by the caller) holds the prefix.
    Existing(BlockId),
}

impl Committed {
    pub fn id(self) -> BlockId {
        match self {
            Committed::New(b) | Committed::Existing(b) => b,
        }
    }
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    capacity: usize,
    fingerprint: u64,
    meta: Vec<Meta>,
    free: Vec<BlockId>,
    index: HashMap<Key, BlockId>,
    /// Committed, unreferenced leaves by `(last_used, id)`.
    evictable: BTreeSet<(u64, BlockId)>,
    tick: u64,
    evictions: u64,
}

impl BlockPool {
    /// A pool of at most `capacity` blocks for the pair named by `fingerprint`.
    pub fn new(block_size: usize, capacity: usize, fingerprint: u64) -> BlockPool {
        BlockPool {
            block_size: block_size.max(1),
            capacity: capacity.min(BlockId::MAX as usize),
            fingerprint,
            meta: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            evictable: BTreeSet::new(),
            tick: 0,
            evictions: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Block ids ever handed out (stores must hold this many).
    pub fn allocated(&self) -> usize {
        self.meta.len()
    }
    /// Blocks in the index.
    pub fn cached(&self) -> usize {
        self.index.len()
    }
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn key(&self, parent: Option<BlockId>, tokens: &[u32]) -> Key {
        Key {
            parent: parent.map_or(Parent::Root(self.fingerprint), Parent::Block),
            tokens: tokens.to_vec(),
        }
    }

    /// The cached chain of full blocks that prefixes `tokens` (longest first
    /// part found in the index). Does not reference the blocks.
    pub fn lookup(&self, tokens: &[u32]) -> Vec<BlockId> {
        let mut chain = Vec::new();
        let mut parent = None;
        for block in tokens.chunks_exact(self.block_size) {
            match self.index.get(&self.key(parent, block)) {
                Some(&id) => {
                    chain.push(id);
                    parent = Some(id);
                }
                None => break,
            }
        }
        chain
    }

    /// Reference blocks (found by `lookup`) so they stay until released.
    pub fn acquire(&mut self, ids: &[BlockId]) {
        for &id in ids {
            self.tick += 1;
            let m = &mut self.meta[id as usize];
            if m.refs == 0 {
                self.evictable.remove(&(m.last_used, id));
            }
            m.refs += 1;
            m.last_used = self.tick;
        }
    }

    /// Drop one reference of each block; unreferenced leaves become evictable.
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let m = &mut self.meta[id as usize];
            debug_assert!(m.refs > 0, "release of an unreferenced block {id}");
            m.refs = m.refs.saturating_sub(1);
            if m.refs == 0 {
                if m.key.is_none() {
                    // A pending block nobody committed.
                    self.free.push(id);
                } else if m.children == 0 {
                    self.evictable.insert((m.last_used, id));
                }
            }
        }
    }

    /// A fresh pending block (referenced once), evicting the least recently
    /// used unreferenced leaf when the pool is full; `None` when every block
    /// is in use.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = if let Some(id) = self.free.pop() {
            id
        } else if self.meta.len() < self.capacity {
            self.meta.push(Meta::default());
            (self.meta.len() - 1) as BlockId
        } else {
            let (_, id) = self.evictable.pop_first()?;
            self.evict(id);
            id
        };
        self.tick += 1;
        self.meta[id as usize] = Meta {
            key: None,
            refs: 1,
            children: 0,
            last_used: self.tick,
        };
        Some(id)
    }

    fn evict(&mut self, id: BlockId) {
        self.evictions += 1;
        let key = self.meta[id as usize].key.take();
        if let Some(key) = key {
            self.index.remove(&key);
            if let Parent::Block(p) = key.parent {
                let pm = &mut self.meta[p as usize];
                pm.children -= 1;
                if pm.children == 0 && pm.refs == 0 {
                    self.evictable.insert((pm.last_used, p));
                }
            }
        }
    }

    /// Put pending block `id` into the index as the block after `parent`
    /// (`None`: the first block) holding `tokens`. The parent must be
    /// committed and referenced by the caller.
    pub fn commit(&mut self, id: BlockId, parent: Option<BlockId>, tokens: &[u32]) -> Committed {
        debug_assert_eq!(tokens.len(), self.block_size);
        debug_assert!(
            self.meta[id as usize].key.is_none(),
            "block {id} committed twice"
        );
        let key = self.key(parent, tokens);
        if let Some(&existing) = self.index.get(&key) {
            self.release(&[id]);
            self.acquire(&[existing]);
            return Committed::Existing(existing);
        }
        if let Some(p) = parent {
            let pm = &mut self.meta[p as usize];
            if pm.refs == 0 && pm.children == 0 {
                self.evictable.remove(&(pm.last_used, p));
            }
            pm.children += 1;
        }
        self.index.insert(key.clone(), id);
        self.meta[id as usize].key = Some(key);
        Committed::New(id)
    }

    /// Check the bookkeeping (tests): every evictable block is a committed,
    /// unreferenced leaf, child counts match the index, nothing is lost.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut children = vec![0u32; self.meta.len()];
        for (key, &id) in &self.index {
            if self.meta[id as usize].key.as_ref() != Some(key) {
                return Err(format!("index entry of block {id} disagrees with its meta"));
            }
            if let Parent::Block(p) = key.parent {
                children[p as usize] += 1;
            }
        }
        for (id, m) in self.meta.iter().enumerate() {
            if m.children != children[id] {
                return Err(format!(
                    "block {id}: {} children recorded, {} in the index",
                    m.children, children[id]
                ));
            }
            let should = m.key.is_some() && m.refs == 0 && m.children == 0;
            if should != self.evictable.contains(&(m.last_used, id as BlockId)) {
                return Err(format!("block {id}: evictable set is wrong ({m:?})"));
            }
        }
        let pending = self.meta.iter().filter(|m| m.key.is_none()).count();
        let referenced_pending = self
            .meta
            .iter()
            .filter(|m| m.key.is_none() && m.refs > 0)
            .count();
        if pending != self.free.len() + referenced_pending {
            return Err(format!(
                "{pending} uncommitted blocks, {} free and {referenced_pending} pending",
                self.free.len()
            ));
        }
        Ok(())
    }

    /// Referenced blocks (tests: zero between calls).
    pub fn referenced(&self) -> usize {
        self.meta.iter().filter(|m| m.refs > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_chain(pool: &mut BlockPool, tokens: &[u32]) -> Vec<BlockId> {
        let mut hit = pool.lookup(tokens);
        pool.acquire(&hit);
        let mut parent = hit.last().copied();
        for block in tokens.chunks_exact(pool.block_size()).skip(hit.len()) {
            let Some(id) = pool.allocate() else { break };
            let id = pool.commit(id, parent, block).id();
            hit.push(id);
            parent = Some(id);
        }
        pool.release(&hit);
        hit
    }

    #[test]
    fn a_chain_is_found_again_by_its_prefix_and_not_by_another_pair() {
        let mut pool = BlockPool::new(2, 10, 7);
        let ids = insert_chain(&mut pool, &[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ids.len(), 3);
        assert_eq!(pool.lookup(&[1, 2, 3, 4, 9, 9]), ids[..2]);
        assert_eq!(pool.lookup(&[1, 2, 3, 4, 5, 6]), ids);
        assert!(pool.lookup(&[2, 2, 3, 4]).is_empty());
        let other = BlockPool::new(2, 10, 8);
        assert!(other.lookup(&[1, 2]).is_empty());
        pool.check_invariants().unwrap();
    }

    #[test]
    fn eviction_takes_least_recently_used_leaves_first_and_spares_referenced_blocks() {
        let mut pool = BlockPool::new(1, 4, 0);
        insert_chain(&mut pool, &[1, 2, 3]); // 1 → 2 → 3
        insert_chain(&mut pool, &[9]); // 9
        pool.check_invariants().unwrap();
        // Touch 9 so that the chain is older; hold the chain's root.
        let nine = pool.lookup(&[9]);
        pool.acquire(&nine);
        pool.release(&nine);
        let root = pool.lookup(&[1]);
        pool.acquire(&root);
        // Full: evicts leaf 3, then 2 (now a leaf), then 9; never the held 1.
        let a = pool.allocate().unwrap();
        assert_eq!(pool.lookup(&[1, 2, 3]).len(), 2);
        let b = pool.allocate().unwrap();
        assert_eq!(pool.lookup(&[1, 2, 3]).len(), 1);
        let c = pool.allocate().unwrap();
        assert!(pool.lookup(&[9]).is_empty());
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.evictions(), 3);
        pool.release(&[a, b, c]);
        pool.release(&root);
        pool.check_invariants().unwrap();
        assert_eq!(pool.referenced(), 0);
    }

    #[test]
    fn committing_a_duplicate_frees_the_pending_block_and_returns_the_existing_one() {
        let mut pool = BlockPool::new(2, 4, 0);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(pool.commit(a, None, &[1, 2]), Committed::New(a));
        assert_eq!(pool.commit(b, None, &[1, 2]), Committed::Existing(a));
        pool.release(&[a, a]);
        pool.check_invariants().unwrap();
        assert_eq!(pool.referenced(), 0);
        assert_eq!(pool.allocate(), Some(b));
    }
}
