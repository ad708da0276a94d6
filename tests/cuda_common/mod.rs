//! Helpers shared by the CUDA test files: the device-or-skip guard, a
//! deterministic RNG, dtype rounding and tolerance checks, fixture paths.
#![allow(dead_code)] // each test file uses a subset

use std::path::PathBuf;

use padv::backend::cuda::cudarc::driver::CudaSlice;
use padv::backend::cuda::{Gpu, probe};
use padv::model::weights::DType;

pub const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// The device, or `None` (with the reason printed) when there is none.
pub fn gpu() -> Option<Gpu> {
    match probe() {
        Ok(_) => Some(Gpu::new(0).expect("a CUDA device is present but could not be opened")),
        Err(why) => {
            if std::env::var_os("PADV_REQUIRE_GPU").is_some() {
                panic!("PADV_REQUIRE_GPU is set but CUDA is unusable: {why}");
            }
            eprintln!("skipping CUDA test: {why}");
            None
        }
    }
}

/// The device if it runs the folded LM head (sm_80+), else `None` with
/// the reason printed.
pub fn fold_gpu() -> Option<Gpu> {
    let gpu = gpu()?;
    if gpu.arch().0 < 8 {
        eprintln!("skipping: the folded LM head needs sm_80+");
        return None;
    }
    Some(gpu)
}

/// Deterministic uniform values in [-1, 1).
pub struct Rng(pub u64);

impl Rng {
    pub fn f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        ((self.f32() * 0.5 + 0.5) * n as f32) as usize % n.max(1)
    }
}

/// `v` as stored in `dtype` and read back.
pub fn round(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
    }
}

pub fn rounded(dtype: DType, v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round(dtype, x)).collect()
}

/// One unit in the last place of `dtype` at `v` (upper bound): a kernel whose
/// f32 result differs from the CPU's by f32 rounding may round to the
/// neighbouring bf16/f16 value, so typed outputs are allowed one ulp.
pub fn ulp(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => 0.0,
        DType::BF16 => v.abs() * (1.0 / 128.0) + 1e-30,
        DType::F16 => v.abs() * (1.0 / 1024.0) + 6e-8,
    }
}

/// Assert `got ≈ want` elementwise: |Δ| ≤ abs + rel·|want| + ulp(dtype).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32, dtype: DType) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * w.abs() + ulp(dtype, w);
        let d = (g - w).abs();
        assert!(
            d <= tol,
            "{what}[{i}]: gpu {g}, cpu {w} (|Δ| {d:e} > {tol:e})"
        );
        if d > worst.0 {
            worst = (d, i);
        }
    }
    eprintln!("{what}: max |Δ| {:.2e} at {}", worst.0, worst.1);
}

pub fn download(gpu: &Gpu, s: &CudaSlice<f32>) -> Vec<f32> {
    gpu.download(&s.as_view()).unwrap()
}

/// The checkout's fixtures: `CARGO_MANIFEST_DIR` at run time when set (a
/// test binary carried to a GPU machine by scripts/gpu-check.sh), else the
/// directory this binary was built from.
pub fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/fixtures")
}
