//! One CUDA device as padv uses it: a context with a single stream (every
//! kernel and cuBLAS call is ordered on it, so cudarc's cross-stream event
//! tracking is switched off), a cuBLAS handle, and the kernel modules that
//! build.rs compiled from `kernels/*.cu`.
//!
//! Image choice per module: the cubin built for the device's architecture
//! family (sm_80 code runs on sm_86/87/89; an `a` target such as sm_90a only
//! on its exact chip), else the embedded PTX, which the driver JIT-compiles
//! when it understands that PTX version.
//!
//! Everything here returns [`Error::Backend`]; cudarc's own panics (missing
//! libcuda, missing libcublas) are avoided by [`probe`] before any call.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    DevicePtrMut, DeviceRepr, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use crate::backend::profile::{self, Part};
use crate::model::weights::{DType, Data};
use crate::{Error, Result};

/// Kernels of one `kernels/*.cu` file, as compiled by build.rs.
pub struct KernelImage {
    /// File stem, e.g. `fused_logprob`.
    pub name: &'static str,
    pub ptx: &'static str,
    /// `compute_XX` the PTX targets.
    pub ptx_arch: u32,
    /// `(arch, cubin)`: arch like `"80"`, `"90"` or `"90a"`.
    pub cubins: &'static [(&'static str, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// Map any CUDA-side error into [`Error::Backend`] with what was being done.
pub(crate) trait CudaResultExt<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> CudaResultExt<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Backend(format!("cuda: {what}: {e}")))
    }
}

pub(crate) fn backend_err(msg: impl Into<String>) -> Error {
    Error::Backend(msg.into())
}

/// Whether CUDA can be used here: the driver library loads, reports at least
/// one device, and cuBLAS loads. `Ok(number of devices)` or why not.
pub fn probe() -> std::result::Result<usize, String> {
    // SAFETY: only tries to dlopen the library; nothing is called through it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so not found)".into());
    }
    cudarc::driver::result::init().map_err(|e| format!("no usable CUDA driver: {e}"))?;
    let n = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    if n <= 0 {
        return Err("no CUDA device".into());
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(
            "CUDA driver found but not cuBLAS (libcublas.so.13); put its directory on LD_LIBRARY_PATH"
                .into(),
        );
    }
    Ok(n as usize)
}

/// Number of usable CUDA devices (0 when CUDA cannot be used at all).
pub fn device_count() -> usize {
    probe().unwrap_or(0)
}

/// Context, stream, cuBLAS handle and kernels of one device.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: RefCell<HashMap<String, (CudaFunction, u32)>>,
    name: String,
    arch: (i32, i32),
    /// Per module, the image loaded (`cubin sm_90a`, `PTX compute_80 (JIT)`).
    images: HashMap<&'static str, String>,
    /// Whether this device's wgmma products passed the probe (run once,
    /// on first use: `super::wgmma`).
    pub(crate) wgmma_ok: OnceCell<bool>,
    smem_optin: u32,
    sms: u32,
}

/// A choice read from the environment variable `var` (parsed with its
/// `FromStr`), or its default when the variable is unset.
pub(crate) fn choice_from_env<T>(var: &str) -> Result<T>
where
    T: std::str::FromStr<Err = crate::Error> + Default,
{
    match std::env::var(var) {
        Ok(v) => v.parse(),
        Err(std::env::VarError::NotPresent) => Ok(T::default()),
        Err(e) => Err(backend_err(format!("{var}: {e}"))),
    }
}

impl Gpu {
    /// Open device `ordinal` and load every kernel module.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        let count = probe()
            .map_err(|why| backend_err(format!("device cuda:{ordinal} requested, but {why}")))?;
        if ordinal >= count {
            return Err(backend_err(format!(
                "device cuda:{ordinal} requested, but only {count} CUDA device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal).ctx("create context")?;
        // SAFETY: padv issues all work on one stream, so the per-buffer events
        // cudarc records for cross-stream ordering are not needed.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_memory(&ctx);
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).ctx("create cuBLAS handle")?;
        let arch = ctx.compute_capability().ctx("compute capability")?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let smem_optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .unwrap_or(48 << 10) as u32;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(1)
            .max(1) as u32;

        let mut modules = HashMap::new();
        let mut images = HashMap::new();
        for img in KERNEL_IMAGES {
            let (module, which) = load_image(&ctx, img, arch)?;
            modules.insert(img.name, module);
            images.insert(img.name, which);
        }
        Ok(Gpu {
            ctx,
            stream,
            blas,
            modules,
            functions: RefCell::new(HashMap::new()),
            name,
            arch,
            images,
            wgmma_ok: OnceCell::new(),
            smem_optin,
            sms,
        })
    }

    /// Device memory this process can still allocate: the driver's free
    /// memory plus what the stream-ordered pool holds unused.
    pub fn free_memory(&self) -> Result<usize> {
        let (free, _total) = self.ctx.mem_get_info().ctx("memory info")?;
        Ok(free + pool_idle_bytes(&self.ctx))
    }

    /// e.g. `NVIDIA H200 (sm_90, cubin sm_90a)`.
    pub fn describe(&self) -> String {
        let mut loaded: Vec<&str> = self.images.values().map(String::as_str).collect();
        loaded.sort();
        loaded.dedup();
        format!(
            "{} (sm_{}{}, {})",
            self.name,
            self.arch.0,
            self.arch.1,
            loaded.join(", ")
        )
    }

    /// The image module `module` (a `kernels/*.cu` stem) was loaded from.
    pub fn image_of(&self, module: &str) -> Option<&str> {
        self.images.get(module).map(String::as_str)
    }

    /// Streaming multiprocessors (sizes grids of memory-bound kernels).
    pub fn multiprocessors(&self) -> u32 {
        self.sms
    }

    /// Most dynamic shared memory a kernel may opt in to, bytes.
    pub fn shared_memory_optin(&self) -> u32 {
        self.smem_optin
    }

    /// Compute capability `(major, minor)`.
    pub fn arch(&self) -> (i32, i32) {
        self.arch
    }

    /// Kernel `name` of module `module`, with room for `smem` bytes of dynamic
    /// shared memory (opting in above the default 48 KiB when needed).
    pub(crate) fn function(&self, module: &str, name: &str, smem: u32) -> Result<CudaFunction> {
        let mut cache = self.functions.borrow_mut();
        let (f, room) = match cache.entry(name.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let m = self
                    .modules
                    .get(module)
                    .ok_or_else(|| backend_err(format!("cuda: no kernel module `{module}`")))?;
                let f = m.load_function(name).ctx(&format!("load kernel {name}"))?;
                e.insert((f, 48 << 10))
            }
        };
        if smem > *room {
            if smem > self.smem_optin {
                return Err(backend_err(format!(
                    "cuda: kernel {name} needs {smem} bytes of shared memory, the device allows {}",
                    self.smem_optin
                )));
            }
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .ctx(&format!("shared memory for {name}"))?;
            *room = smem;
        }
        Ok(f.clone())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().ctx("synchronize")
    }

    /// Run `f` as `part` of the forward breakdown ([`profile`]): when the
    /// timers are on, the device is synchronised before and after, so the
    /// part's time is its own kernels'; otherwise just `f`.
    pub fn part<T>(&self, part: Part, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !profile::on() {
            return f();
        }
        self.synchronize()?;
        let span = profile::span(part);
        let r = f()?;
        self.synchronize()?;
        drop(span);
        Ok(r)
    }

    /// Copy host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.stream.null().ctx("allocate");
        }
        self.stream.clone_htod(data).ctx("upload")
    }

    /// Copy a device buffer (or view) back to the host.
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        src: &CudaView<'_, T>,
    ) -> Result<Vec<T>> {
        if src.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = vec![T::default(); src.len()];
        self.stream.memcpy_dtoh(src, &mut out).ctx("download")?;
        Ok(out)
    }

    /// An uninitialised f32 buffer of `len` elements.
    pub fn alloc_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: every buffer is fully written by a kernel before it is read
        // (tests poison them to check exactly that).
        unsafe { self.stream.alloc(len.max(1)) }.ctx(&format!("allocate {len} floats"))
    }

    /// An f32 buffer filled with NaN (all bits set).
    pub fn poisoned_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        let mut b = self.alloc_f32(len)?;
        self.poison(&mut b.as_view_mut())?;
        Ok(b)
    }

    /// Set every byte of `dst` to 0xFF: NaN in f32, bf16 and f16 alike.
    pub fn poison<T>(&self, dst: &mut CudaViewMut<'_, T>) -> Result<()> {
        let bytes = std::mem::size_of::<T>() * dst.len();
        if bytes == 0 {
            return Ok(());
        }
        let (ptr, _rec) = dst.device_ptr_mut(&self.stream);
        // SAFETY: `ptr` addresses `bytes` bytes of a live allocation on this stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, self.stream.cu_stream())
        }
        .ctx("memset")
    }
}

/// Load one module: the best cubin, else the PTX.
fn load_image(
    ctx: &Arc<CudaContext>,
    img: &KernelImage,
    (major, minor): (i32, i32),
) -> Result<(Arc<CudaModule>, String)> {
    let cc = (major * 10 + minor) as u32;
    let best = img
        .cubins
        .iter()
        .filter(|(a, _)| match a.strip_suffix('a') {
            Some(exact) => exact.parse::<u32>().ok() == Some(cc),
            None => a
                .parse::<u32>()
                .is_ok_and(|a| a / 10 == major as u32 && a <= cc),
        })
        .max_by_key(|(a, _)| (a.trim_end_matches('a').parse::<u32>().unwrap_or(0), a.len()));
    if let Some((arch, bytes)) = best {
        let module = ctx
            .load_module(Ptx::from_binary(bytes.to_vec()))
            .ctx(&format!("load {} cubin sm_{arch}", img.name))?;
        return Ok((module, format!("cubin sm_{arch}")));
    }
    if img.ptx_arch > cc {
        return Err(backend_err(format!(
            "cuda: kernels were built for sm_{} and up, this device is sm_{cc} \
             (rebuild with CUDA_ARCHS={cc})",
            img.ptx_arch
        )));
    }
    let module = ctx.load_module(Ptx::from_src(img.ptx)).map_err(|e| {
        backend_err(format!(
            "cuda: no cubin for sm_{cc} in this build and the driver could not JIT the PTX \
             of {} ({e}); rebuild with CUDA_ARCHS={cc}",
            img.name
        ))
    })?;
    Ok((module, format!("PTX compute_{} (JIT)", img.ptx_arch)))
}

/// The device's default stream-ordered memory pool (the one cudarc's
/// `cuMemAllocAsync` allocations come from); `None` without memory pools.
fn default_pool(ctx: &CudaContext) -> Option<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` receives a handle owned by the driver.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(pool)
}

/// A u64 attribute of `pool`.
fn pool_attr(
    pool: cudarc::driver::sys::CUmemoryPool,
    attr: cudarc::driver::sys::CUmemPool_attribute,
) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: the attributes read here (reserved / used memory) are u64.
    let r = unsafe {
        cudarc::driver::sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast())
    };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// Bytes of the pool's reservation not in use (free for our allocations, but
/// counted as used by `cuMemGetInfo`); 0 when it cannot be read.
fn pool_idle_bytes(ctx: &CudaContext) -> usize {
    use cudarc::driver::sys::CUmemPool_attribute as A;
    let idle = default_pool(ctx).and_then(|pool| {
        let reserved = pool_attr(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        let used = pool_attr(pool, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        Some(reserved.saturating_sub(used))
    });
    idle.unwrap_or(0) as usize
}

/// Keep memory freed into the device's stream-ordered pool (cudarc allocates
/// with `cuMemAllocAsync`) instead of handing it back to the driver at every
/// synchronisation, the default (release threshold 0): each scoring call
/// allocates the same activations, K/V pool and logits again, and a fresh
/// allocation of hundreds of MiB costs milliseconds where reusing the pool's
/// costs nothing. Best effort: a device without memory pools allocates
/// synchronously anyway.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let Some(pool) = default_pool(ctx) else {
        return;
    };
    let mut keep = u64::MAX;
    // SAFETY: CU_MEMPOOL_ATTR_RELEASE_THRESHOLD takes a u64.
    let _ = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
    };
}

/// A device buffer whose element type is a weight dtype (f32, bf16, f16):
/// weights, GEMM operands and the KV pool. Stored as bytes with the dtype
/// alongside; kernels are picked by dtype.
pub struct DevTensor {
    pub(crate) buf: CudaSlice<u8>,
    pub dtype: DType,
    /// Elements (not bytes).
    pub len: usize,
}

/// A borrowed element range of a [`DevTensor`].
pub struct DevView<'a> {
    pub(crate) view: CudaView<'a, u8>,
    pub dtype: DType,
    pub len: usize,
}

impl<'a> DevView<'a> {
    /// Elements `[start, end)` of this view.
    pub fn slice(&self, start: usize, end: usize) -> Result<DevView<'a>> {
        let es = self.dtype.size();
        let view = (start <= end && end <= self.len)
            .then(|| self.view.try_slice(start * es..end * es))
            .flatten()
            .ok_or_else(|| out_of_range(start, end, self.len))?;
        Ok(DevView {
            view,
            dtype: self.dtype,
            len: end - start,
        })
    }
}

/// A mutable element range of a [`DevTensor`].
pub struct DevViewMut<'a> {
    pub(crate) view: CudaViewMut<'a, u8>,
    pub dtype: DType,
    pub len: usize,
}

impl DevTensor {
    /// `len` elements, every bit zero (0.0 in every dtype).
    pub fn zeros(gpu: &Gpu, dtype: DType, len: usize) -> Result<DevTensor> {
        let buf = gpu
            .stream
            .alloc_zeros::<u8>((len * dtype.size()).max(16))
            .ctx(&format!("allocate {len} zeroed {}", dtype.name()))?;
        Ok(DevTensor { buf, dtype, len })
    }

    /// Uninitialised storage for `len` elements.
    pub fn alloc(gpu: &Gpu, dtype: DType, len: usize) -> Result<DevTensor> {
        let bytes = (len * dtype.size()).max(16);
        // SAFETY: written before read (see `Gpu::alloc_f32`).
        let buf = unsafe { gpu.stream.alloc::<u8>(bytes) }
            .ctx(&format!("allocate {len} {} elements", dtype.name()))?;
        Ok(DevTensor { buf, dtype, len })
    }

    /// NaN-filled storage (tests: unwritten elements show up).
    pub fn poisoned(gpu: &Gpu, dtype: DType, len: usize) -> Result<DevTensor> {
        let mut t = DevTensor::alloc(gpu, dtype, len)?;
        gpu.poison(&mut t.buf.as_view_mut())?;
        Ok(t)
    }

    /// Upload a stored tensor's bytes unchanged.
    pub fn from_data(gpu: &Gpu, data: Data<'_>) -> Result<DevTensor> {
        let mut t = DevTensor::alloc(gpu, data.dtype(), data.len())?;
        t.write(gpu, 0, data)?;
        Ok(t)
    }

    /// Upload f32 values rounded to `dtype`.
    pub fn from_f32(gpu: &Gpu, values: &[f32], dtype: DType) -> Result<DevTensor> {
        let mut t = DevTensor::alloc(gpu, dtype, values.len())?;
        t.write_f32(gpu, 0, values)?;
        Ok(t)
    }

    /// Write `data` at element `offset`, converting to this tensor's dtype
    /// when the stored dtype differs.
    pub fn write(&mut self, gpu: &Gpu, offset: usize, data: Data<'_>) -> Result<()> {
        let bytes: Option<&[u8]> = match data {
            Data::F32(s) => Some(bytemuck::cast_slice(s)),
            Data::F16(s) => Some(bytemuck::cast_slice(s)),
            Data::BF16(s) => Some(bytemuck::cast_slice(s)),
            Data::Merged(_) => None,
        };
        match bytes {
            Some(bytes) if data.dtype() == self.dtype => {
                self.write_bytes(gpu, offset, data.len(), bytes)
            }
            // Mixed-dtype checkpoint, or a merged reference formed host-side
            // (already rounded to the checkpoint's dtype): widen, then
            // narrow to our dtype.
            _ => self.write_f32(gpu, offset, &data.to_f32_vec()),
        }
    }

    /// Write f32 values at element `offset`, rounded to this tensor's dtype.
    pub fn write_f32(&mut self, gpu: &Gpu, offset: usize, values: &[f32]) -> Result<()> {
        match self.dtype {
            DType::F32 => self.write_bytes(gpu, offset, values.len(), bytemuck::cast_slice(values)),
            DType::BF16 => {
                let v: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
                self.write_bytes(gpu, offset, v.len(), bytemuck::cast_slice(&v))
            }
            DType::F16 => {
                let v: Vec<half::f16> = values.iter().map(|&x| half::f16::from_f32(x)).collect();
                self.write_bytes(gpu, offset, v.len(), bytemuck::cast_slice(&v))
            }
        }
    }

    fn write_bytes(&mut self, gpu: &Gpu, offset: usize, n: usize, bytes: &[u8]) -> Result<()> {
        if offset + n > self.len {
            return Err(backend_err(format!(
                "cuda: write of {n} elements at {offset} into a tensor of {}",
                self.len
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let es = self.dtype.size();
        let mut dst = self.buf.slice_mut(offset * es..(offset + n) * es);
        gpu.stream.memcpy_htod(bytes, &mut dst).ctx("upload")
    }

    /// Download and widen to f32.
    pub fn to_f32_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = gpu.download(&self.buf.slice(..self.len * self.dtype.size()))?;
        Ok(match self.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }

    /// Elements `[start, end)`.
    pub fn view(&self, start: usize, end: usize) -> Result<DevView<'_>> {
        self.all().slice(start, end)
    }

    /// Elements `[start, end)`, mutable.
    pub fn view_mut(&mut self, start: usize, end: usize) -> Result<DevViewMut<'_>> {
        let es = self.dtype.size();
        let len = self.len;
        let view = (start <= end && end <= len)
            .then(|| self.buf.try_slice_mut(start * es..end * es))
            .flatten()
            .ok_or_else(|| out_of_range(start, end, len))?;
        Ok(DevViewMut {
            view,
            dtype: self.dtype,
            len: end - start,
        })
    }

    /// An error unless this tensor holds f32 values (for the f32 views).
    fn check_f32(&self) -> Result<()> {
        if self.dtype == DType::F32 {
            return Ok(());
        }
        Err(backend_err(format!(
            "cuda: f32 view of a {} tensor",
            self.dtype.name()
        )))
    }

    /// The whole buffer as f32 elements (only for `DType::F32` tensors).
    pub fn f32_view(&self) -> Result<CudaView<'_, f32>> {
        self.check_f32()?;
        // SAFETY: the bytes hold `len` f32 values; allocations are 256-byte aligned.
        unsafe { self.buf.transmute::<f32>(self.len) }
            .ok_or_else(|| out_of_range(0, self.len, self.buf.len() / 4))
    }

    /// [`DevTensor::f32_view`], writable.
    pub fn f32_view_mut(&mut self) -> Result<CudaViewMut<'_, f32>> {
        self.check_f32()?;
        let len = self.len;
        let bytes = self.buf.len();
        // SAFETY: as in `f32_view`.
        unsafe { self.buf.transmute_mut::<f32>(len) }.ok_or_else(|| out_of_range(0, len, bytes / 4))
    }

    pub fn all(&self) -> DevView<'_> {
        DevView {
            view: self.buf.as_view(),
            dtype: self.dtype,
            len: self.len,
        }
    }

    pub fn all_mut(&mut self) -> DevViewMut<'_> {
        DevViewMut {
            view: self.buf.as_view_mut(),
            dtype: self.dtype,
            len: self.len,
        }
    }
}

fn out_of_range(start: usize, end: usize, len: usize) -> Error {
    backend_err(format!(
        "cuda: element range {start}..{end} outside a buffer of {len}"
    ))
}

/// Elements `[start, end)` of a typed device buffer.
pub fn sub<T>(buf: &CudaSlice<T>, start: usize, end: usize) -> Result<CudaView<'_, T>> {
    (start <= end)
        .then(|| buf.try_slice(start..end))
        .flatten()
        .ok_or_else(|| out_of_range(start, end, buf.len()))
}

/// Elements `[start, end)` of a typed device buffer, mutable.
pub fn sub_mut<T>(buf: &mut CudaSlice<T>, start: usize, end: usize) -> Result<CudaViewMut<'_, T>> {
    let len = buf.len();
    (start <= end)
        .then(|| buf.try_slice_mut(start..end))
        .flatten()
        .ok_or_else(|| out_of_range(start, end, len))
}

/// `LaunchConfig` for a grid of `grid` blocks of `block` threads.
pub(crate) fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}
