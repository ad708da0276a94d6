//! Compute backends. A backend owns a loaded policy/reference pair and turns
//! batches of token sequences into per-token [`TokenScores`].
//!
//! `cpu` is the reference implementation and always present; `cuda` is
//! compiled with the `cuda` feature, and a stand-in that returns a clear
//! error replaces it otherwise (no `cfg` spread through callers). `plan`
//! is what both share: batch checks, which rows to score and where their
//! hidden states come from, waves over the prefix cache, the scatter of
//! results.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_disabled.rs"]
pub mod cuda;
pub mod plan;
pub mod profile;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::Result;
use crate::model::weights::DType;
use crate::model::{Config, Model};
pub use crate::score::SeqRequest;
use crate::score::TokenScores;

/// A policy/reference pair resident on some device.
pub trait PairScorer: Send {
    /// Device and threads, for logs and `/v1/models`.
    fn describe(&self) -> String;
    /// Score a batch; one [`TokenScores`] per request, in order.
    fn score(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>>;
    /// Turn the shared KV-prefix cache ([`crate::kv`]) on with these options,
    /// or off (`None`). Backends without one score without it.
    fn set_prefix_cache(&mut self, _opts: Option<crate::kv::KvOptions>) -> Result<()> {
        Ok(())
    }
    /// Score a batch's reference side only (an α sweep's later points: the
    /// policy's fields are NaN, to be taken from an earlier pass). The
    /// default scores both models.
    fn score_reference(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        self.score(batch)
    }
    /// Replace the reference (a merged reference at another α: the same
    /// mapped files, no reloading); anything cached for the old one is
    /// dropped, so no prefix hit crosses references.
    fn set_reference(&mut self, _reference: Arc<Model>) -> Result<()> {
        Err(crate::Error::Backend(format!(
            "{} cannot replace its reference model",
            self.describe()
        )))
    }
    /// Prefix-cache counters and gauges; `None` when the backend keeps none.
    fn cache_stats(&self) -> Option<crate::kv::CacheStats> {
        None
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA device 0 when present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`; expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The arithmetic asked for (`--compute-dtype`), one setting for both
/// backends.
///
/// - CUDA: the dtype weights, GEMM inputs and the KV cache are converted to
///   at upload; `auto` keeps the checkpoint's.
/// - CPU: `f32` (and `auto`) is the exact path; `bf16` runs the weight GEMMs
///   and the LM head on bf16 inputs with f32 accumulation
///   ([`cpu::gemm_bf16`]: `vdpbf16ps` where the CPU has AVX512-BF16, the
///   same roundings in f32 arithmetic elsewhere: the same GEMM bits on
///   every machine, docs/cpu.md); norms, softmax, RoPE, attention, the DeltaNet recurrence and
///   the scoring stay f32. `f16` is refused: no CPU instruction does f16
///   dot products with f32 accumulation at a gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::Auto => "auto",
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::F16 => "f16",
        }
    }

    /// The CUDA backend's upload dtype (`None`: the checkpoint's).
    pub fn gpu(self) -> Option<DType> {
        match self {
            ComputeDtype::Auto => None,
            ComputeDtype::F32 => Some(DType::F32),
            ComputeDtype::Bf16 => Some(DType::BF16),
            ComputeDtype::F16 => Some(DType::F16),
        }
    }

    /// The CPU backend's GEMM arithmetic; `f16` is an error saying why.
    pub fn cpu(self) -> Result<cpu::gemm_bf16::Gemm> {
        use cpu::gemm_bf16::Gemm;
        match self {
            ComputeDtype::Auto | ComputeDtype::F32 => Ok(Gemm::F32),
            ComputeDtype::Bf16 => Ok(Gemm::Bf16),
            ComputeDtype::F16 => Err(crate::Error::Backend(
                "compute dtype f16 is for the CUDA backend: the CPU backend computes \
                 in f32 or bf16 (no CPU instruction here does f16 dot products \
                 faster); use --compute-dtype bf16 or f32"
                    .into(),
            )),
        }
    }
}

impl From<DType> for ComputeDtype {
    fn from(d: DType) -> ComputeDtype {
        match d {
            DType::F32 => ComputeDtype::F32,
            DType::BF16 => ComputeDtype::Bf16,
            DType::F16 => ComputeDtype::F16,
        }
    }
}

impl FromStr for ComputeDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ComputeDtype::Auto),
            _ => s.parse::<DType>().map(ComputeDtype::from).map_err(|_| {
                format!("unknown compute dtype `{s}`; expected f32, bf16, f16 or auto")
            }),
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CUDA ordinal `device` resolves to (`auto` with a usable GPU: 0), or
/// `None` for the CPU.
pub fn cuda_ordinal(device: Device) -> Option<usize> {
    match device {
        Device::Cuda(n) => Some(n),
        Device::Auto if cuda::device_count() > 0 => Some(0),
        Device::Auto | Device::Cpu => None,
    }
}

/// Load a pair onto `device` (`auto`: the GPU when there is one and it runs
/// the pair's architecture, else the CPU), in f32 on the CPU and the
/// checkpoint's dtype on CUDA.
pub fn open_pair(
    device: Device,
    policy: Arc<Model>,
    reference: Arc<Model>,
) -> Result<Box<dyn PairScorer>> {
    open_pair_with(device, policy, reference, ComputeDtype::Auto)
}

/// The first of a pair's models whose family's GPU parity has not yet
/// passed on a device (`Arch::gpu_verified`): `--device auto` keeps such a
/// pair on the CPU, and a CUDA pair asked for by name says so.
pub(crate) fn gpu_unverified<'a>(policy: &'a Config, reference: &'a Config) -> Option<&'a Config> {
    [policy, reference]
        .into_iter()
        .find(|c| !c.arch.gpu_verified())
}

/// [`open_pair`] in the arithmetic `compute` asks for ([`ComputeDtype`]).
pub fn open_pair_with(
    device: Device,
    policy: Arc<Model>,
    reference: Arc<Model>,
    compute: ComputeDtype,
) -> Result<Box<dyn PairScorer>> {
    crate::model::check_pair(&policy, &reference)?;
    crate::simd::check()?;
    // `auto` scores a pair on the CPU while its family's GPU parity has not
    // yet passed on a device (`Arch::gpu_verified`: Gemma 4); asking for
    // CUDA by name runs it there.
    let cpu_only = gpu_unverified(&policy.config, &reference.config);
    let ordinal = match (device, cpu_only) {
        (Device::Auto, Some(_)) => None,
        (d, _) => cuda_ordinal(d),
    };
    match (ordinal, compute.gpu()) {
        (Some(n), None) => Ok(Box::new(cuda::CudaPair::new(n, policy, reference)?)),
        (Some(n), Some(d)) => Ok(Box::new(cuda::CudaPair::with_compute_dtype(
            n, policy, reference, d,
        )?)),
        (None, _) => {
            let gemm = compute.cpu()?;
            Ok(Box::new(
                cpu::CpuPair::new(policy, reference).with_gemm(gemm),
            ))
        }
    }
}
