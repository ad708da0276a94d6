//! Checkpoints: `config.json` turned into a model description by the
//! family files ([`config`], [`family`], [`rope`]), memory-mapped safetensors
//! ([`weights`]) and the tensor table the description implies ([`layout`]).

pub mod config;
pub mod family;
mod header;
pub mod layout;
pub mod merge;
pub mod rope;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Arch, Config};
pub use layout::DecoderWeights;
pub use merge::{MergeMethod, MergeOptions, MergePlan};
pub use weights::{DType, Weights};

use crate::{Error, Result};

/// A loaded (mapped and validated) checkpoint.
pub struct Model {
    pub dir: PathBuf,
    pub config: Config,
    pub weights: Arc<Weights>,
    /// A merged reference: the plan (policy, keep rules) and α.
    merge: Option<(Arc<MergePlan>, f64)>,
}

impl Model {
    /// Read the config, map the weights and check every tensor's presence,
    /// dtype and shape before any compute.
    pub fn load(dir: &Path) -> Result<Model> {
        if !dir.is_dir() {
            return Err(Error::config(dir, "model directory does not exist"));
        }
        let config = Config::from_dir(dir)?;
        let weights = Weights::open(dir)?;
        DecoderWeights::bind_all(&config, &weights)?;
        Ok(Model {
            dir: dir.to_path_buf(),
            config,
            weights,
            merge: None,
        })
    }

    /// This reference merged with the plan's policy at `alpha`: the same
    /// mapped files (nothing is read or copied), every tensor a merged view.
    pub fn merged(&self, plan: Arc<MergePlan>, alpha: f64) -> Result<Model> {
        merge::check_alpha(alpha).map_err(|e| Error::input("alpha", e))?;
        Ok(Model {
            dir: self.dir.clone(),
            config: self.config.clone(),
            weights: self.weights.clone(),
            merge: Some((plan, alpha)),
        })
    }

    /// The merge plan and α of a merged reference.
    pub fn merge(&self) -> Option<(&Arc<MergePlan>, f64)> {
        self.merge.as_ref().map(|(p, a)| (p, *a))
    }

    /// The shape-checked tensors (cheap: a few hash lookups per layer); for
    /// a merged reference, merged views of them.
    pub fn bind(&self) -> DecoderWeights<'_> {
        let stored = self.bind_stored();
        match &self.merge {
            None => stored,
            Some((plan, alpha)) => stored
                .try_map(|t| plan.view(t, *alpha))
                .expect("the merge plan was built from these tensors"),
        }
    }

    /// The checkpoint's own tensors, never merged.
    pub fn bind_stored(&self) -> DecoderWeights<'_> {
        DecoderWeights::bind(&self.config, &self.weights)
            .expect("tensors were validated when the model was loaded")
    }

    pub fn dtype(&self) -> DType {
        self.weights.main_dtype().unwrap_or(DType::F32)
    }

    /// One-line description: architecture, size, dtype.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let (heads, kv_heads) = c.attention_heads();
        format!(
            "{} ({} layers, hidden {}, heads {}/{}, vocab {}, {})",
            c.arch_name,
            c.num_layers,
            c.hidden_size,
            heads,
            kv_heads,
            c.vocab_size,
            self.dtype().name()
        )
    }
}

/// Check that a policy and its reference can be scored together.
pub fn check_pair(policy: &Model, reference: &Model) -> Result<()> {
    if policy.config.vocab_size != reference.config.vocab_size {
        return Err(Error::Incompatible(format!(
            "vocab_size differs: policy {} has {}, reference {} has {}",
            policy.dir.display(),
            policy.config.vocab_size,
            reference.dir.display(),
            reference.config.vocab_size
        )));
    }
    Ok(())
}
