//! The prefix cache on the device: each model's cached K/V and boundary
//! hidden states in device memory, indexed by the same [`crate::kv`] block
//! ids as the CPU's ([`PairCache`]`<DeviceKv>`), and the copies between
//! them and a wave's paged pool (kernels/kv_copy.cu).
//!
//! Layout per model: per attention layer one K and one V arena `[capacity,
//! block_size, kv_heads, head_dim]` in the model's dtype (a cache block is
//! `block_size / 16` blocks of the pool layout kernels/attention.cu reads:
//! 16 tokens for attention-only pairs, 64 for hybrids, whose blocks end at
//! the delta rule's chunk boundaries as on the CPU), per DeltaNet layer the
//! recurrent state after each block's last token and its convolution's
//! last `K − 1` input rows (f32, [`RecurrentStore`]), and `last_hidden
//! [capacity, hidden]`, the final-norm hidden state of each block's last
//! token in the model's dtype (the LM head's input). The arenas are
//! allocated whole when the cache is turned on (the budget is device
//! memory, so it is taken up front, as vLLM sizes its KV pool) and never
//! grow.
//!
//! A wave's forward ([`super::forward::forward_rows`]) works in its own
//! paged pool, as without the cache: per layer it copies the hit blocks from
//! the arena into the pool before attention and the blocks it filled from
//! the pool into the arena after, so attention reads one pool whatever was
//! cached (the copies move what attention reads anyway, once). A DeltaNet
//! layer starts each sequence from its last hit block's state and tail and
//! writes the state after each filled block's last token straight into the
//! store (kernels/deltanet.cu), then that block's tail.

use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use super::deltanet::RecurrentStore;
use super::device::{CudaResultExt, DevTensor, DevView, DevViewMut, Gpu, backend_err, cfg};
use super::forward::PagedBatch;
use super::kernels::KV_BLOCK;
use super::weights::DeviceModel;
use crate::Result;
use crate::kv::{BlockId, BlockStore, ModelKv, PairCache};
use crate::model::config::LayerDesc;

/// One model's cached blocks on the device.
pub struct DeviceKv {
    /// Per attention layer `[capacity · sub · KV_BLOCK, kv_heads · head_dim]`
    /// (`None` for a DeltaNet layer and a layer reading another's K/V).
    pub k: Vec<Option<DevTensor>>,
    pub v: Vec<Option<DevTensor>>,
    /// Per DeltaNet layer its states and convolution tails (`None` for an
    /// attention layer).
    pub recurrent: Vec<Option<RecurrentStore>>,
    /// `[capacity, hidden]`.
    pub last_hidden: DevTensor,
    capacity: usize,
    bytes: usize,
}

impl DeviceKv {
    /// Bytes one block of `block_size` tokens of `m` costs: K and V of every
    /// attention layer with its own (a KV-sharing layer has none), the
    /// snapshot of every DeltaNet layer, one hidden state.
    pub fn bytes_per_block(m: &DeviceModel, block_size: usize) -> usize {
        let kv_dims = ModelKv::layer_dims(&m.config);
        let layer = |(l, kvd): (&LayerDesc, usize)| match l.deltanet() {
            Some(d) => RecurrentStore::bytes_per_block(d),
            None => 2 * block_size * kvd * m.dtype.size(),
        };
        (m.config.layers.iter().zip(kv_dims))
            .map(layer)
            .sum::<usize>()
            + m.config.hidden_size * m.dtype.size()
    }

    /// Arenas for `capacity` blocks of `block_size` tokens (a multiple of
    /// [`KV_BLOCK`]) of `m`, uninitialised: a block is written by the
    /// forward that fills it before any lookup can hit it.
    pub fn new(gpu: &Gpu, m: &DeviceModel, capacity: usize, block_size: usize) -> Result<DeviceKv> {
        let n = m.layers.len();
        let (mut k, mut v, mut recurrent) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let kv_dims = ModelKv::layer_dims(&m.config);
        for (l, kvd) in m.config.layers.iter().zip(kv_dims) {
            let rows = capacity * block_size * kvd;
            let arena = || {
                (kvd > 0)
                    .then(|| DevTensor::alloc(gpu, m.dtype, rows))
                    .transpose()
            };
            k.push(arena()?);
            v.push(arena()?);
            let store = l.deltanet().map(|d| RecurrentStore::new(gpu, d, capacity));
            recurrent.push(store.transpose()?);
        }
        Ok(DeviceKv {
            k,
            v,
            recurrent,
            last_hidden: DevTensor::alloc(gpu, m.dtype, capacity * m.config.hidden_size)?,
            capacity,
            bytes: capacity * Self::bytes_per_block(m, block_size),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Layer `li`'s K and V arenas (an attention layer's).
    fn arenas(&mut self, li: usize) -> Result<(&mut DevTensor, &mut DevTensor)> {
        match (self.k[li].as_mut(), self.v[li].as_mut()) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(backend_err(format!(
                "cuda: layer {li} keeps no K/V in the cache"
            ))),
        }
    }

    /// Layer `li`'s hit blocks (`block` elements per [`KV_BLOCK`] rows) into
    /// a wave's K/V pools, before its attention.
    pub fn load_hits(
        &mut self,
        gpu: &Gpu,
        li: usize,
        (k_pool, v_pool): (&mut DevTensor, &mut DevTensor),
        copies: &WaveCopies,
        block: usize,
    ) -> Result<()> {
        let (k, v) = self.arenas(li)?;
        gpu.copy_rows(&k.all(), &mut k_pool.all_mut(), &copies.hits, block)?;
        gpu.copy_rows(&v.all(), &mut v_pool.all_mut(), &copies.hits, block)
    }

    /// The wave's filled blocks of layer `li` from its pools into the arenas,
    /// after its attention (before the next layer reuses the pools).
    pub fn keep_fills(
        &mut self,
        gpu: &Gpu,
        li: usize,
        (k_pool, v_pool): (&DevTensor, &DevTensor),
        copies: &WaveCopies,
        block: usize,
    ) -> Result<()> {
        let (k, v) = self.arenas(li)?;
        gpu.copy_rows(&k_pool.all(), &mut k.all_mut(), &copies.fills, block)?;
        gpu.copy_rows(&v_pool.all(), &mut v.all_mut(), &copies.fills, block)
    }
}

impl BlockStore for DeviceKv {
    /// Allocated whole at creation: nothing to grow.
    fn ensure(&mut self, blocks: usize) {
        debug_assert!(blocks <= self.capacity);
    }
    fn bytes_allocated(&self) -> usize {
        self.bytes
    }
}

/// The prefix cache of a pair on the device.
pub type DeviceCache = PairCache<DeviceKv>;

/// Index lists for [`Gpu::copy_rows`], uploaded once per wave and used by
/// every layer of both models.
pub struct RowCopies {
    /// `(from, to)` row pairs, kept to check them against the buffers.
    pub pairs: Vec<(usize, usize)>,
    src: CudaSlice<i32>,
    dst: CudaSlice<i32>,
}

impl RowCopies {
    pub fn upload(gpu: &Gpu, pairs: Vec<(usize, usize)>) -> Result<RowCopies> {
        let src: Vec<i32> = pairs.iter().map(|p| p.0 as i32).collect();
        let dst: Vec<i32> = pairs.iter().map(|p| p.1 as i32).collect();
        Ok(RowCopies {
            src: gpu.upload(&src)?,
            dst: gpu.upload(&dst)?,
            pairs,
        })
    }
}

/// The copies of one wave: hit blocks (arena → pool), filled blocks
/// (pool → arena), as `(from, to)` indices of [`KV_BLOCK`]-row sub-blocks
/// (a cache block of `block_size` tokens is `block_size / KV_BLOCK` of
/// them); for DeltaNet layers, which cached block each sequence starts from
/// and where each filled block ends.
pub struct WaveCopies {
    pub hits: RowCopies,
    pub fills: RowCopies,
    /// `(last hit block, sequence)` for each sequence with a hit.
    pub starts: Vec<(usize, usize)>,
    /// `(packed row of its last token, block)` for each filled block.
    pub ends: Vec<(usize, usize)>,
}

impl WaveCopies {
    /// From each member's `(hit, fill)` cache blocks of `block_size` tokens,
    /// the wave's layout (`layout.block_table[s · max_blocks + j]`: pool
    /// block of member `s`'s logical [`KV_BLOCK`]-token block `j`) and each
    /// filled block with the packed row of its last token (`WavePlan::fills`).
    pub fn new(
        gpu: &Gpu,
        members: &[(&[BlockId], &[BlockId])],
        layout: &PagedBatch,
        block_size: usize,
        filled: &[(BlockId, usize)],
    ) -> Result<WaveCopies> {
        let sub = block_size / KV_BLOCK;
        let (mut hits, mut fills) = (Vec::new(), Vec::new());
        let mut starts = Vec::new();
        for (s, (hit, fill)) in members.iter().enumerate() {
            let pool = |j: usize| layout.block_table[s * layout.max_blocks + j] as usize;
            // Cache block `id`, logical block `j` of the sequence: `sub`
            // pairs of sub-blocks.
            let pairs = |j: usize, id: BlockId| {
                (0..sub).map(move |q| (id as usize * sub + q, pool(j * sub + q)))
            };
            hits.extend((hit.iter().enumerate()).flat_map(|(j, &id)| pairs(j, id)));
            let h = hit.len();
            fills.extend(
                (fill.iter().enumerate())
                    .flat_map(|(j, &id)| pairs(h + j, id).map(|(a, b)| (b, a))),
            );
            if let Some(&last) = hit.last() {
                starts.push((last as usize, s));
            }
        }
        let ends = (filled.iter())
            .map(|&(id, row)| (row, id as usize))
            .collect();
        Ok(WaveCopies {
            hits: RowCopies::upload(gpu, hits)?,
            fills: RowCopies::upload(gpu, fills)?,
            starts,
            ends,
        })
    }
}

impl Gpu {
    /// `dst[dst_rows[i]] = src[src_rows[i]]` for rows of `row` elements —
    /// kernels/kv_copy.cu; CPU twin: `kv::ModelKv::gather` and the
    /// `last_hidden` copies of `backend::cpu`. Row indices (block ids of the
    /// pool and the cache, rows of a hidden-state list) are checked against
    /// both buffers here on the host. `src` and `dst` are whole tensors
    /// (16-byte aligned starts).
    pub fn copy_rows(
        &self,
        src: &DevView<'_>,
        dst: &mut DevViewMut<'_>,
        rows: &RowCopies,
        row: usize,
    ) -> Result<()> {
        let fits = |i: usize, len: usize| (i + 1) * row <= len;
        let n = rows.pairs.len();
        if src.dtype != dst.dtype
            || row == 0
            || !rows
                .pairs
                .iter()
                .all(|&(a, b)| fits(a, src.len) && fits(b, dst.len))
        {
            return Err(backend_err(format!(
                "cuda: copy_rows of {n} rows of {row} elements between {} and {} elements \
                 ({} / {}) out of range or mismatched",
                src.len,
                dst.len,
                src.dtype.name(),
                dst.dtype.name()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let bytes = row * src.dtype.size();
        let (name, words) = if bytes.is_multiple_of(16) {
            ("copy_rows_b16", bytes / 16)
        } else {
            ("copy_rows_b2", bytes / 2)
        };
        let f = self.function("kv_copy", name, 0)?;
        let w = i32::try_from(words).map_err(|_| backend_err("cuda: copy_rows row too wide"))?;
        let (s, d): (CudaView<'_, i32>, CudaView<'_, i32>) =
            (rows.src.as_view(), rows.dst.as_view());
        let mut b = self.stream.launch_builder(&f);
        b.arg(&src.view).arg(&s).arg(&mut dst.view).arg(&d).arg(&w);
        // SAFETY: every row index was checked against both buffers above;
        // device buffers are 256-byte aligned and rows of a multiple of 16
        // bytes keep every row 16-byte aligned.
        unsafe { b.launch(cfg((n as u32, 1, 1), 256, 0)) }.ctx(name)?;
        Ok(())
    }
}
