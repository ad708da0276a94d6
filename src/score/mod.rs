//! Scoring: the fused per-token log-prob difference ([`fused`]), the
//! aggregation of token scores into step and trajectory scores
//! ([`aggregate`]), and the core output types every consumer shares: the
//! scored step and trajectory ([`scored`]) and progress advantage with its
//! baselines as trajectory scores ([`method`]). The pipeline and sessions
//! produce these; the applications (`apps`) read them.

pub mod aggregate;
pub mod fused;
pub mod method;
pub mod scored;

pub use method::{Aggregation, Method};
pub use scored::{
    Labels, ReadOptions, ScoreSettings, ScoredSet, ScoredTrajectory, SkippedRecord, StepScore,
    parse_scored, read_scored,
};

/// A number as JSON: NaN and infinities (undefined) become `null`.
pub(crate) fn num(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// One sequence to score.
#[derive(Debug, Clone, Default)]
pub struct SeqRequest {
    pub token_ids: Vec<u32>,
    /// Positions `t` whose log-prob is wanted (`mask[t]`); `None` = all `t ≥ 1`.
    /// The LM head runs only where asked.
    pub score_mask: Option<Vec<bool>>,
}

impl SeqRequest {
    /// Whether the log-prob of position `t` is asked for (never position 0:
    /// nothing predicts it).
    pub fn wants(&self, t: usize) -> bool {
        t >= 1
            && self
                .score_mask
                .as_ref()
                .is_none_or(|m| m.get(t).copied().unwrap_or(false))
    }
}

/// Per-token outputs of scoring one sequence with a policy/reference pair.
///
/// Every vector has the sequence's length `T`. Entry `t` describes the
/// prediction of token `t` from positions `< t`; entry 0 and every position
/// not asked for are `NaN` (serialised as `null`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenScores {
    /// log π_θ(x_t | x_<t)
    pub logp_policy: Vec<f32>,
    /// log π_ref(x_t | x_<t)
    pub logp_reference: Vec<f32>,
    /// Entropy of the policy's next-token distribution at t-1 (nats).
    pub entropy_policy: Vec<f32>,
    /// Mean of the policy's top-20 log-probs at t-1 ("self-certainty").
    pub self_certainty: Vec<f32>,
}

impl TokenScores {
    pub fn new_nan(len: usize) -> Self {
        TokenScores {
            logp_policy: vec![f32::NAN; len],
            logp_reference: vec![f32::NAN; len],
            entropy_policy: vec![f32::NAN; len],
            self_certainty: vec![f32::NAN; len],
        }
    }
    pub fn len(&self) -> usize {
        self.logp_policy.len()
    }
    pub fn is_empty(&self) -> bool {
        self.logp_policy.is_empty()
    }
    /// logp_policy − logp_reference, NaN where either is absent.
    pub fn advantage(&self) -> Vec<f32> {
        self.logp_policy
            .iter()
            .zip(&self.logp_reference)
            .map(|(p, r)| p - r)
            .collect()
    }
}
