//! Hopper's warpgroup products (wgmma, kernels/wgmma.cuh) checked on the
//! device before any kernel relies on them.
//!
//! Their shared-memory operands are read through descriptors and a 128-byte
//! swizzle that only the hardware (and the CPU emulator's reading of the PTX
//! ISA, tests/cuda_emu/wgmma_emu.h) defines. [`Gpu::wgmma_check`] runs
//! kernels/wgmma_probe.cu — attention's two products in the layouts an
//! attention kernel on wgmma uses: `S = Q·Kᵀ` with both operands K-major in
//! shared memory, `O = P·V` with P from registers and V MN-major — on
//! deterministic inputs and compares them with the host's own products.
//! `None` where the sm_90a cubin is not what the device loaded (other chips,
//! or a build without that target).

use cudarc::driver::PushKernelArg;
use half::{bf16, f16};

use super::device::{CudaResultExt, DevTensor, Gpu, cfg};
use crate::Result;
use crate::model::weights::DType;

/// Largest `|device − host| / max(1, |host|)` a case may show. The products
/// of 16-bit values are exact; what remains is the order of f32 sums (≤ 128
/// terms of magnitude ≤ 1 here). A layout misread moves values by O(1).
pub const WGMMA_TOL: f64 = 2e-3;

/// One probe case: dtype and head dim, the worst relative error of S and O.
#[derive(Clone, Debug)]
pub struct WgmmaCase {
    pub dtype: DType,
    pub head_dim: usize,
    pub s_err: f64,
    pub o_err: f64,
}

impl WgmmaCase {
    pub fn passed(&self) -> bool {
        self.s_err <= WGMMA_TOL && self.o_err <= WGMMA_TOL
    }
}

/// Queries and keys of the probe (one warpgroup's tile).
const ROWS: usize = 64;

/// `v` rounded to `dtype` (nearest, ties to even) and back.
fn round(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(v).to_f32(),
        DType::F16 => f16::from_f32(v).to_f32(),
        DType::F32 => v,
    }
}

/// Worst `|got − want| / max(1, |want|)`.
fn worst(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let e = (g as f64 - w).abs() / w.abs().max(1.0);
            if e.is_nan() { f64::INFINITY } else { e }
        })
        .fold(0.0, f64::max)
}

impl Gpu {
    /// Whether this device loaded the sm_90a cubin of the probe's module,
    /// the only image holding wgmma.
    pub fn has_wgmma(&self) -> bool {
        self.image_of("wgmma_probe") == Some("cubin sm_90a")
    }

    /// Whether kernels may rely on wgmma here: [`Gpu::has_wgmma`], and the
    /// probe's four cases passed (run once per device; a launch error counts
    /// as a failure). A kernel on wgmma is refused where this is false.
    pub fn wgmma_verified(&self) -> bool {
        *self.wgmma_ok.get_or_init(
            || matches!(self.wgmma_check(), Ok(Some(cases)) if cases.iter().all(WgmmaCase::passed)),
        )
    }

    /// The probe's four cases (bf16 and f16, head dims 64 and 128) against
    /// the host, or `None` without [`Gpu::has_wgmma`].
    pub fn wgmma_check(&self) -> Result<Option<Vec<WgmmaCase>>> {
        if !self.has_wgmma() {
            return Ok(None);
        }
        let mut cases = Vec::new();
        for dtype in [DType::BF16, DType::F16] {
            for hd in [64, 128] {
                cases.push(self.probe_case(dtype, hd)?);
            }
        }
        Ok(Some(cases))
    }

    fn probe_case(&self, dtype: DType, hd: usize) -> Result<WgmmaCase> {
        // Deterministic values in [-1, 1), as the device will hold them.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (hd as u64) << 8 ^ dtype.size() as u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            round(
                dtype,
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0,
            )
        };
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..ROWS * hd).map(|_| next()).collect(),
            (0..ROWS * hd).map(|_| next()).collect(),
            (0..ROWS * hd).map(|_| next()).collect(),
        );
        let (qd, kd, vd) = (
            DevTensor::from_f32(self, &q, dtype)?,
            DevTensor::from_f32(self, &k, dtype)?,
            DevTensor::from_f32(self, &v, dtype)?,
        );
        let mut s_dev = self.poisoned_f32(ROWS * ROWS)?;
        let mut o_dev = self.poisoned_f32(ROWS * hd)?;
        let name = format!("wgmma_probe_{}_{hd}", dtype.name());
        let smem = (3 * ROWS * hd * dtype.size() + 1024) as u32;
        let f = self.function("wgmma_probe", &name, smem)?;
        let (qv, kv, vv) = (qd.all(), kd.all(), vd.all());
        let mut b = self.stream.launch_builder(&f);
        b.arg(&qv.view)
            .arg(&kv.view)
            .arg(&vv.view)
            .arg(&mut s_dev)
            .arg(&mut o_dev);
        // SAFETY: one block of 128 threads reads 64·hd values of each input
        // and writes 64·64 and 64·hd floats, the sizes allocated above.
        unsafe { b.launch(cfg((1, 1, 1), 128, smem)) }.ctx(&name)?;
        let s = self.download(&s_dev.as_view())?;
        let o = self.download(&o_dev.as_view())?;

        let s_want: Vec<f64> = (0..ROWS * ROWS)
            .map(|e| {
                let (r, j) = (e / ROWS, e % ROWS);
                (0..hd)
                    .map(|d| q[r * hd + d] as f64 * k[j * hd + d] as f64)
                    .sum()
            })
            .collect();
        // O from the device's own S, rounded as the kernel rounds P: this
        // checks the second product alone.
        let o_want: Vec<f64> = (0..ROWS * hd)
            .map(|e| {
                let (r, col) = (e / hd, e % hd);
                (0..ROWS)
                    .map(|j| round(dtype, s[r * ROWS + j]) as f64 * v[j * hd + col] as f64)
                    .sum()
            })
            .collect();
        Ok(WgmmaCase {
            dtype,
            head_dim: hd,
            s_err: worst(&s, &s_want),
            o_err: worst(&o, &o_want),
        })
    }
}
