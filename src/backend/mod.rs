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

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::Result;
use crate::model::Model;
use crate::model::weights::DType;
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
/// the pair's architecture, else the CPU), computing in the checkpoint's dtype.
pub fn open_pair(
    device: Device,
    policy: Arc<Model>,
    reference: Arc<Model>,
) -> Result<Box<dyn PairScorer>> {
    open_pair_with(device, policy, reference, None)
}

/// [`open_pair`], with the CUDA backend's compute dtype (`None`: the
/// checkpoint's). Asking for one on the CPU backend is an error: it always
/// computes in f32.
pub fn open_pair_with(
    device: Device,
    policy: Arc<Model>,
    reference: Arc<Model>,
    gpu_dtype: Option<DType>,
) -> Result<Box<dyn PairScorer>> {
    crate::model::check_pair(&policy, &reference)?;
    crate::simd::check()?;
    // `auto` scores a pair the CUDA backend does not run (hybrid models,
    // sandwich blocks, …) on the CPU; asking for CUDA by name is refused.
    let cpu_only = [&policy, &reference]
        .into_iter()
        .find(|m| m.config.uniform().is_none());
    let ordinal = match (device, cpu_only) {
        (Device::Auto, Some(_)) => None,
        (d, _) => cuda_ordinal(d),
    };
    match (ordinal, gpu_dtype) {
        (Some(n), None) => Ok(Box::new(cuda::CudaPair::new(n, policy, reference)?)),
        (Some(n), Some(d)) => Ok(Box::new(cuda::CudaPair::with_compute_dtype(
            n, policy, reference, d,
        )?)),
        (None, Some(d)) => {
            let why = match device {
                Device::Cpu => "the CPU was asked for".to_string(),
                _ if let Some(m) = cpu_only => format!(
                    "the CUDA backend does not run {} yet",
                    m.config.arch.hf_name()
                ),
                _ => format!(
                    "no usable CUDA device: {}",
                    cuda::probe().err().unwrap_or_default()
                ),
            };
            Err(crate::Error::Backend(format!(
                "GPU dtype {} asked for, but scoring runs on the CPU backend ({why}), \
                 which computes in f32",
                d.name()
            )))
        }
        (None, None) => Ok(Box::new(cpu::CpuPair::new(policy, reference))),
    }
}
