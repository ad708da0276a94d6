//! The prefix cache on the device: each model's cached K/V and boundary
//! hidden states in device memory, indexed by the same [`crate::kv`] block
//! ids as the CPU's ([`PairCache`]`<DeviceKv>`), and the copies between
//! them and a wave's paged pool (kernels/kv_copy.cu).
//!
//! Layout per model: per layer one K and one V arena `[capacity, KV_BLOCK,
//! kv_heads, head_dim]` in the model's dtype (a block is one 16-token block
//! of the pool layout kernels/attention.cu reads), and `last_hidden
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
//! cached (the copies move what attention reads anyway, once).

use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use super::device::{CudaResultExt, DevTensor, DevView, DevViewMut, Gpu, backend_err, cfg};
use super::kernels::KV_BLOCK;
use super::weights::DeviceModel;
use crate::Result;
use crate::kv::{BlockId, BlockStore, PairCache};

/// One model's cached blocks on the device.
pub struct DeviceKv {
    /// Per layer `[capacity · KV_BLOCK, kv_heads · head_dim]`.
    pub k: Vec<DevTensor>,
    pub v: Vec<DevTensor>,
    /// `[capacity, hidden]`.
    pub last_hidden: DevTensor,
    capacity: usize,
    bytes: usize,
}

impl DeviceKv {
    /// Bytes one block of `m` costs: K and V of every layer, one hidden state.
    pub fn bytes_per_block(m: &DeviceModel) -> usize {
        let kvd = m.shape.num_kv_heads * m.shape.head_dim;
        (m.layers.len() * 2 * KV_BLOCK * kvd + m.config.hidden_size) * m.dtype.size()
    }

    /// Arenas for `capacity` blocks of `m` (uninitialised: a block is
    /// written by the forward that fills it before any lookup can hit it).
    pub fn new(gpu: &Gpu, m: &DeviceModel, capacity: usize) -> Result<DeviceKv> {
        let kvd = m.shape.num_kv_heads * m.shape.head_dim;
        let rows = capacity * KV_BLOCK * kvd;
        let mut k = Vec::with_capacity(m.layers.len());
        let mut v = Vec::with_capacity(m.layers.len());
        for _ in &m.layers {
            k.push(DevTensor::alloc(gpu, m.dtype, rows)?);
            v.push(DevTensor::alloc(gpu, m.dtype, rows)?);
        }
        Ok(DeviceKv {
            k,
            v,
            last_hidden: DevTensor::alloc(gpu, m.dtype, capacity * m.config.hidden_size)?,
            capacity,
            bytes: capacity * Self::bytes_per_block(m),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Layer `li`'s hit blocks (`block` elements each) into a wave's K/V
    /// pools, before its attention.
    pub fn load_hits(
        &self,
        gpu: &Gpu,
        li: usize,
        (k_pool, v_pool): (&mut DevTensor, &mut DevTensor),
        copies: &WaveCopies,
        block: usize,
    ) -> Result<()> {
        gpu.copy_rows(
            &self.k[li].all(),
            &mut k_pool.all_mut(),
            &copies.hits,
            block,
        )?;
        gpu.copy_rows(
            &self.v[li].all(),
            &mut v_pool.all_mut(),
            &copies.hits,
            block,
        )
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
        gpu.copy_rows(
            &k_pool.all(),
            &mut self.k[li].all_mut(),
            &copies.fills,
            block,
        )?;
        gpu.copy_rows(
            &v_pool.all(),
            &mut self.v[li].all_mut(),
            &copies.fills,
            block,
        )
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
/// (pool → arena), as `(from, to)` block indices.
pub struct WaveCopies {
    pub hits: RowCopies,
    pub fills: RowCopies,
}

impl WaveCopies {
    /// From each member's `(hit, fill)` cache blocks and its pool blocks in
    /// the wave's block table (`table[s · max_blocks + j]`: logical block
    /// `j` of member `s`).
    pub fn new(
        gpu: &Gpu,
        members: &[(&[BlockId], &[BlockId])],
        table: &[i32],
        max_blocks: usize,
    ) -> Result<WaveCopies> {
        let (mut hits, mut fills) = (Vec::new(), Vec::new());
        for (s, (hit, fill)) in members.iter().enumerate() {
            let pool = |j: usize| table[s * max_blocks + j] as usize;
            hits.extend(
                hit.iter()
                    .enumerate()
                    .map(|(j, &id)| (id as usize, pool(j))),
            );
            let h = hit.len();
            fills.extend(
                fill.iter()
                    .enumerate()
                    .map(|(j, &id)| (pool(h + j), id as usize)),
            );
        }
        Ok(WaveCopies {
            hits: RowCopies::upload(gpu, hits)?,
            fills: RowCopies::upload(gpu, fills)?,
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
