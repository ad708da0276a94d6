//! Stand-in for the CUDA backend in builds without the `cuda` feature: the
//! same names as `cuda/mod.rs`, reporting that CUDA is not compiled in (the
//! pattern of ripgrep's disabled.rs and candle's dummy backend), so callers
//! need no `cfg`.

use std::convert::Infallible;
use std::sync::Arc;

use super::{PairScorer, SeqRequest};
use crate::model::Model;
use crate::score::TokenScores;
use crate::{Error, Result};

const NOT_BUILT: &str = "this padv was built without the `cuda` feature";

/// Never constructed in this build.
pub struct CudaPair {
    never: Infallible,
}

impl CudaPair {
    pub fn new(ordinal: usize, _policy: Arc<Model>, _reference: Arc<Model>) -> Result<CudaPair> {
        Err(Error::Backend(format!(
            "device cuda:{ordinal} requested, but {NOT_BUILT} \
             (rebuild with `cargo build --release --features cuda`)"
        )))
    }
}

impl CudaPair {
    pub fn with_compute_dtype(
        ordinal: usize,
        policy: Arc<Model>,
        reference: Arc<Model>,
        _compute: crate::model::weights::DType,
    ) -> Result<CudaPair> {
        CudaPair::new(ordinal, policy, reference)
    }
}

impl PairScorer for CudaPair {
    fn describe(&self) -> String {
        match self.never {}
    }
    fn score(&mut self, _batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        match self.never {}
    }
}

/// Always `Err`: CUDA is not compiled in.
pub fn probe() -> std::result::Result<usize, String> {
    Err(NOT_BUILT.to_string())
}

/// Always 0.
pub fn device_count() -> usize {
    0
}
