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
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::device::{CudaResultExt, DevTensor, Gpu, cfg};
use crate::Result;
use crate::backend::cpu::gemm::matmul_wt_reference;
use crate::model::weights::{DType, Data, Tensor};

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

/// Worst `|got − want| / max(1, |want|)`.
fn worst(got: &[f32], want: &[f32]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let (g, w) = (g as f64, w as f64);
            let e = (g - w).abs() / w.abs().max(1.0);
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
        // Deterministic values in [-1, 1), rounded as the device holds them.
        let mut rng = SmallRng::seed_from_u64(hd as u64 ^ (dtype.size() as u64) << 16);
        let mut values = || {
            let mut v: Vec<f32> = (0..ROWS * hd)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            dtype.round(&mut v);
            v
        };
        let (q, k, v) = (values(), values(), values());
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

        // The host's products (f64 sums): S = Q·Kᵀ, and O from the device's
        // own S rounded as the kernel rounds P (this checks the second
        // product alone) times V, as P·(Vᵀ)ᵀ.
        let (k_shape, vt_shape) = ([ROWS, hd], [hd, ROWS]);
        let k_t = Tensor {
            name: "k",
            shape: &k_shape,
            data: Data::F32(&k),
        };
        let s_want = matmul_wt_reference(&q, ROWS, &k_t);
        let mut p = s.clone();
        dtype.round(&mut p);
        let vt: Vec<f32> = (0..hd * ROWS)
            .map(|e| v[(e % ROWS) * hd + e / ROWS])
            .collect();
        let vt_t = Tensor {
            name: "vt",
            shape: &vt_shape,
            data: Data::F32(&vt),
        };
        let o_want = matmul_wt_reference(&p, ROWS, &vt_t);
        Ok(WgmmaCase {
            dtype,
            head_dim: hd,
            s_err: worst(&s, &s_want),
            o_err: worst(&o, &o_want),
        })
    }
}
