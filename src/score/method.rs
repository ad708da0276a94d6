//! Progress advantage and the baselines as step values and trajectory scores,
//! each oriented so that higher means "predicted more successful".
//!
//! Follows the paper's `_score_trajectory` (`runners/tau2_uq.py`): an action
//! step with no scored tokens (truncated, or empty) contributes 0.0 to progress
//! advantage and the log-prob baselines, keeping the step count stable, and is
//! skipped by the certainty baselines, whose value is undefined without tokens.
//! A step that is neither but has no value (a log-prob or certainty
//! missing) leaves the trajectory without that method's score, as does a
//! score that is not finite (an overflowing sum): a score is never built
//! from missing steps.
//! Self-certainty is the mean top-20 log-prob, used with the paper's sign;
//! entropy is negated (lower entropy = more confident). The paper has no
//! entropy baseline; this one is ours.

use std::fmt;
use std::str::FromStr;

use crate::score::aggregate::{StepAgg, TokenAgg};
use crate::score::scored::ScoredTrajectory;
use crate::trajectory::scored_span;
use crate::{Error, Result};

/// A trajectory scorer: progress advantage or one of its baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    ProgressAdvantage,
    PolicyLogprob,
    ReferenceLogprob,
    Entropy,
    SelfCertainty,
    /// Self-certainty of the last step (DeepConf "tail").
    DeepconfTail,
    /// Mean of the lowest ⌈10%⌉ per-step self-certainties (DeepConf "bottom 10%").
    DeepconfBottom10,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::ProgressAdvantage,
        Method::PolicyLogprob,
        Method::ReferenceLogprob,
        Method::Entropy,
        Method::SelfCertainty,
        Method::DeepconfTail,
        Method::DeepconfBottom10,
    ];

    /// The key used in JSON output and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::ProgressAdvantage => "progress_advantage",
            Method::PolicyLogprob => "policy_logprob",
            Method::ReferenceLogprob => "reference_logprob",
            Method::Entropy => "entropy",
            Method::SelfCertainty => "self_certainty",
            Method::DeepconfTail => "deepconf_tail",
            Method::DeepconfBottom10 => "deepconf_bottom10",
        }
    }

    /// A short human label for tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Method::ProgressAdvantage => "Progress advantage",
            Method::PolicyLogprob => "Policy log-prob",
            Method::ReferenceLogprob => "Reference log-prob",
            Method::Entropy => "Neg. entropy",
            Method::SelfCertainty => "Self-certainty",
            Method::DeepconfTail => "DeepConf tail",
            Method::DeepconfBottom10 => "DeepConf bottom-10%",
        }
    }

    /// The step aggregation this method uses when asked for `requested`.
    pub fn step_agg(self, requested: StepAgg) -> StepAgg {
        match self {
            Method::DeepconfTail => StepAgg::Last,
            Method::DeepconfBottom10 => StepAgg::Bottom10,
            _ => requested,
        }
    }

    /// Whether a step without scored tokens counts as 0.0 (true) or is skipped.
    fn unscored_counts_as_zero(self) -> bool {
        matches!(
            self,
            Method::ProgressAdvantage | Method::PolicyLogprob | Method::ReferenceLogprob
        )
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                format!("unknown method `{s}`; expected one of {}", names.join("|"))
            })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to turn tokens into steps and steps into a trajectory score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregation {
    /// `None`: use the step values stored in the record (its own `token_agg`
    /// for advantage and log-probs, the token mean for entropy and
    /// self-certainty). `Some`: re-aggregate from the token arrays.
    pub token: Option<TokenAgg>,
    pub step: StepAgg,
}

impl Aggregation {
    /// The stored step values, reduced with `step`.
    pub fn stored(step: StepAgg) -> Self {
        Aggregation { token: None, step }
    }
}

impl ScoredTrajectory {
    /// Per-action-step values of `method` (higher = better); `None` where the
    /// step has no scored tokens. Needs the token arrays when `token` differs
    /// from what the record stores.
    pub fn step_values(&self, method: Method, token: Option<TokenAgg>) -> Result<Vec<Option<f64>>> {
        // Stored values: the record's token_agg for advantage and log-probs,
        // the token mean for entropy and self-certainty.
        let stored_agg = if method.unscored_counts_as_zero() {
            self.settings.token_agg
        } else {
            TokenAgg::Mean
        };
        let stored_ok = match token {
            None => true,
            Some(t) => self.tokens.is_none() && t == stored_agg,
        };
        if stored_ok {
            return Ok(self.steps.iter().map(|s| stored_value(method, s)).collect());
        }
        let (Some(agg), Some(tokens)) = (token, &self.tokens) else {
            return Err(Error::input(
                &self.location,
                format!(
                    "re-aggregating `{method}` with token aggregation `{}` needs the per-token \
                     arrays; score with `padv score --tokens`",
                    token.map_or("stored", |t| t.name())
                ),
            ));
        };
        let beta = self.settings.beta;
        let values = self
            .steps
            .iter()
            .map(|s| {
                // A step without tokens has no value, re-aggregated or not.
                if s.unscored() {
                    return None;
                }
                // The positions it was scored from (as when it was scored).
                let span = s.span.map_or(0..0, |(a, b)| scored_span(a, b));
                let lp = || agg.apply(&tokens.logp_policy[span.clone()]);
                let lr = || agg.apply(&tokens.logp_reference[span.clone()]);
                match method {
                    Method::ProgressAdvantage => Some(beta * (lp()? - lr()?)),
                    Method::PolicyLogprob => lp(),
                    Method::ReferenceLogprob => lr(),
                    Method::Entropy => agg.apply(&tokens.entropy_policy[span.clone()]).map(|e| -e),
                    Method::SelfCertainty | Method::DeepconfTail | Method::DeepconfBottom10 => {
                        agg.apply(&tokens.self_certainty[span.clone()])
                    }
                }
                .filter(|v| !v.is_nan())
            })
            .collect();
        Ok(values)
    }

    /// Trajectory score of `method` (higher = predicted more successful);
    /// `None` when no step with tokens has a value (every step truncated or
    /// empty: the score would be made of the 0.0 stand-ins alone), when a
    /// step with tokens has none, or when the score is not finite.
    pub fn score(&self, method: Method, agg: Aggregation) -> Result<Option<f64>> {
        let values = self.step_values(method, agg.token)?;
        let mut steps = Vec::with_capacity(values.len());
        let mut scored = 0;
        for (v, s) in values.into_iter().zip(&self.steps) {
            if s.unscored() {
                if method.unscored_counts_as_zero() {
                    steps.push(0.0)
                }
                continue;
            }
            match v {
                Some(v) => steps.push(v),
                None => return Ok(None),
            }
            scored += 1;
        }
        if scored == 0 {
            return Ok(None);
        }
        Ok(method
            .step_agg(agg.step)
            .apply(&steps)
            .filter(|v| v.is_finite()))
    }
}

fn stored_value(method: Method, s: &crate::score::scored::StepScore) -> Option<f64> {
    match method {
        Method::ProgressAdvantage => s.advantage,
        Method::PolicyLogprob => s.logp_policy,
        Method::ReferenceLogprob => s.logp_reference,
        Method::Entropy => s.entropy.map(|e| -e),
        Method::SelfCertainty | Method::DeepconfTail | Method::DeepconfBottom10 => s.self_certainty,
    }
    .filter(|v| !v.is_nan())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::TokenScores;
    use crate::score::scored::{ScoreSettings, StepScore};

    fn step(adv: Option<f64>, sc: Option<f64>, ent: Option<f64>) -> StepScore {
        StepScore {
            advantage: adv,
            logp_policy: adv.map(|a| a - 1.0),
            logp_reference: Some(-1.0),
            self_certainty: sc,
            entropy: ent,
            ..StepScore::default()
        }
    }

    fn traj(steps: Vec<StepScore>) -> ScoredTrajectory {
        ScoredTrajectory::new("t", steps, ScoreSettings::default())
    }

    #[test]
    fn truncated_and_empty_steps_count_as_zero_for_advantage_and_are_skipped_for_certainty() {
        let truncated = StepScore {
            truncated: true,
            ..step(None, None, None)
        };
        let empty = StepScore {
            empty: true,
            ..step(None, None, None)
        };
        for unscored in [truncated, empty] {
            let t = traj(vec![step(Some(3.0), Some(-2.0), Some(1.0)), unscored]);
            let mean = Aggregation::stored(StepAgg::Mean);
            assert_eq!(t.score(Method::ProgressAdvantage, mean).unwrap(), Some(1.5));
            assert_eq!(t.score(Method::SelfCertainty, mean).unwrap(), Some(-2.0));
            assert_eq!(t.score(Method::Entropy, mean).unwrap(), Some(-1.0));
            assert_eq!(t.score(Method::DeepconfTail, mean).unwrap(), Some(-2.0));
            assert_eq!(t.score(Method::PolicyLogprob, mean).unwrap(), Some(1.0));
        }
    }

    #[test]
    fn a_trajectory_of_truncated_and_empty_steps_alone_has_no_score() {
        let cut = StepScore {
            truncated: true,
            ..step(Some(0.0), None, None)
        };
        let empty = StepScore {
            empty: true,
            ..step(Some(0.0), None, None)
        };
        let t = traj(vec![cut, empty]);
        let mean = Aggregation::stored(StepAgg::Mean);
        for m in Method::ALL {
            assert_eq!(t.score(m, mean).unwrap(), None, "{m}");
        }
    }

    #[test]
    fn a_missing_step_value_leaves_the_trajectory_without_a_score() {
        let t = traj(vec![
            step(Some(-3.0), Some(-2.0), Some(1.0)),
            step(None, Some(-1.0), None),
        ]);
        let mean = Aggregation::stored(StepAgg::Mean);
        assert_eq!(t.score(Method::ProgressAdvantage, mean).unwrap(), None);
        assert_eq!(t.score(Method::PolicyLogprob, mean).unwrap(), None);
        assert_eq!(t.score(Method::SelfCertainty, mean).unwrap(), Some(-1.5));
        // The certainty baselines too: step 1 has tokens but no entropy.
        assert_eq!(t.score(Method::Entropy, mean).unwrap(), None);
        // A score that overflows is no score.
        let huge = traj(vec![step(Some(f64::MAX), None, None); 2]);
        let sum = Aggregation::stored(StepAgg::Sum);
        assert_eq!(huge.score(Method::ProgressAdvantage, sum).unwrap(), None);
    }

    #[test]
    fn deepconf_methods_fix_their_step_aggregation() {
        let t = traj(
            [-1.0, -5.0, -2.0]
                .iter()
                .map(|&c| step(Some(0.0), Some(c), None))
                .collect(),
        );
        let sum = Aggregation::stored(StepAgg::Sum);
        assert_eq!(t.score(Method::SelfCertainty, sum).unwrap(), Some(-8.0));
        assert_eq!(t.score(Method::DeepconfTail, sum).unwrap(), Some(-2.0));
        assert_eq!(t.score(Method::DeepconfBottom10, sum).unwrap(), Some(-5.0));
    }

    #[test]
    fn token_arrays_are_re_aggregated_per_model_then_subtracted() {
        let mut tokens = TokenScores::new_nan(5);
        tokens.logp_policy = vec![f32::NAN, -1.0, -3.0, -0.5, -0.25];
        tokens.logp_reference = vec![f32::NAN, -2.0, -1.0, -1.0, -2.0];
        tokens.entropy_policy = vec![f32::NAN, 0.5, 1.5, 1.0, 1.0];
        tokens.self_certainty = vec![f32::NAN, -4.0, -2.0, -3.0, -3.0];
        let settings = ScoreSettings {
            beta: 2.0,
            ..ScoreSettings::default()
        };
        let steps = vec![
            StepScore {
                span: Some((1, 3)),
                ..StepScore::default()
            },
            StepScore {
                span: Some((3, 5)),
                ..StepScore::default()
            },
        ];
        let t = ScoredTrajectory::new("t", steps, settings)
            .with_tokens(tokens)
            .unwrap();
        // min: policy min(-1,-3) = -3, reference min(-2,-1) = -2 → 2·(−1) = −2.
        let v = t
            .step_values(Method::ProgressAdvantage, Some(TokenAgg::Min))
            .unwrap();
        assert_eq!(v, vec![Some(-2.0), Some(2.0 * (-0.5 - -2.0))]);
        let e = t.step_values(Method::Entropy, Some(TokenAgg::Max)).unwrap();
        assert_eq!(e, vec![Some(-1.5), Some(-1.0)]);
        // A truncated step keeps no value when re-aggregated, and a step
        // opening the sequence is aggregated from its other tokens.
        let mut t = t;
        t.steps[1].truncated = true;
        t.steps[0].span = Some((0, 3));
        let v = t
            .step_values(Method::ProgressAdvantage, Some(TokenAgg::Min))
            .unwrap();
        assert_eq!(v, vec![Some(-2.0), None]);
    }

    #[test]
    fn re_aggregating_without_token_arrays_is_a_clear_error() {
        let t = traj(vec![step(Some(1.0), None, None)]);
        let e = t
            .step_values(Method::ProgressAdvantage, Some(TokenAgg::Max))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tokens"), "{e}");
        // The record's own token aggregation needs no re-aggregation.
        let same = t.step_values(Method::ProgressAdvantage, Some(TokenAgg::Mean));
        assert_eq!(same.unwrap(), vec![Some(1.0)]);
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert!(
            "pa".parse::<Method>()
                .unwrap_err()
                .contains("deepconf_tail")
        );
    }
}
