//! Failure attribution: which action step was the decisive error, predicted
//! from per-step scores by the paper's three predictors (`runners/fa.py`):
//!
//! - **min_cumulative**: the step where the running sum of step scores is
//!   lowest — where the trajectory had lost the most ground.
//! - **sharpest_drop**: the step with the lowest score; the first step when
//!   no score is negative.
//! - **sharpest_abs_drop**: the step with the most negative change from the
//!   previous step; the first step when no change is ≤ 0 (or with one step).
//!
//! Ties go to the earliest step. Steps without scored tokens count as 0.0, as
//! in the paper. Predictions are action-step indices; against a Who&When
//! `mistake_step` (a message index) the predicted step's message index is
//! compared instead.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::score::aggregate::TokenAgg;
use crate::score::method::Method;
use crate::score::scored::{ScoredSet, ScoredTrajectory};
use crate::{Error, Result};

/// A rule turning per-step scores into one predicted error step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Predictor {
    MinCumulative,
    SharpestDrop,
    SharpestAbsDrop,
}

impl Predictor {
    pub const ALL: [Predictor; 3] = [
        Predictor::MinCumulative,
        Predictor::SharpestDrop,
        Predictor::SharpestAbsDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Predictor::MinCumulative => "min_cumulative",
            Predictor::SharpestDrop => "sharpest_drop",
            Predictor::SharpestAbsDrop => "sharpest_abs_drop",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Predictor::MinCumulative => "Min. cumulative",
            Predictor::SharpestDrop => "Sharpest drop",
            Predictor::SharpestAbsDrop => "Sharpest abs. drop",
        }
    }

    /// The predicted step (index into `values`); `None` for no steps.
    pub fn predict(self, values: &[f64]) -> Option<usize> {
        if values.is_empty() {
            return None;
        }
        Some(match self {
            Predictor::MinCumulative => {
                let mut running = 0.0;
                let cumulative: Vec<f64> = values
                    .iter()
                    .map(|v| {
                        running += v;
                        running
                    })
                    .collect();
                first_argmin(&cumulative)
            }
            Predictor::SharpestDrop => {
                if values.iter().all(|&v| v >= 0.0) {
                    0
                } else {
                    first_argmin(values)
                }
            }
            Predictor::SharpestAbsDrop => {
                let deltas: Vec<f64> = values.windows(2).map(|w| w[1] - w[0]).collect();
                if deltas.iter().any(|&d| d <= 0.0) {
                    first_argmin(&deltas) + 1
                } else {
                    0
                }
            }
        })
    }
}

/// Index of the smallest value; the earliest among equals.
fn first_argmin(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v < values[best] {
            best = i;
        }
    }
    best
}

impl FromStr for Predictor {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Predictor::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Predictor::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown predictor `{s}`; expected one of {}",
                    names.join("|")
                )
            })
    }
}

impl fmt::Display for Predictor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The unit a decisive-error label is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelUnit {
    /// `failure_step`: 0-based index among the action steps.
    ActionStep,
    /// `mistake_step` (Who&When): index into the conversation's messages.
    Message,
}

impl LabelUnit {
    pub fn field(self) -> &'static str {
        match self {
            LabelUnit::ActionStep => "failure_step",
            LabelUnit::Message => "mistake_step",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            LabelUnit::ActionStep => "action step (0-based index among action steps)",
            LabelUnit::Message => "message (0-based index into history/messages)",
        }
    }
}

/// A trajectory's labelled decisive error: `failure_step` if given, else
/// `mistake_step`.
pub fn error_label(t: &ScoredTrajectory) -> Option<(LabelUnit, usize)> {
    match (t.labels.failure_step, t.labels.mistake_step) {
        (Some(s), _) => Some((LabelUnit::ActionStep, s)),
        (None, Some(m)) => Some((LabelUnit::Message, m)),
        (None, None) => None,
    }
}

/// Why [`attribute`] gives `t` no prediction from its stored values.
pub fn unattributable(t: &ScoredTrajectory, method: Method) -> String {
    let missing = t.step_values(method, None).ok().and_then(|v| {
        v.iter()
            .zip(&t.steps)
            .position(|(v, s)| v.is_none() && !s.unscored())
    });
    match missing {
        _ if t.steps.is_empty() => "no scored steps".into(),
        Some(k) => format!(
            "step {k} has tokens but no {method} value: no error step is predicted around it"
        ),
        None => format!("no step has a {method} value"),
    }
}

/// `padv attribute`'s lines for `set`: one per trajectory (its attribution,
/// or `{"id", "error"}` saying why there is none), then one per error
/// record it skipped.
pub fn attribution_lines(set: &ScoredSet, method: Method) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(set.trajectories.len() + set.skipped.len());
    for t in &set.trajectories {
        out.push(match attribute(t, method, None)? {
            Some(att) => att.to_json(),
            None => json!({"id": t.id, "error": unattributable(t, method)}),
        });
    }
    out.extend(
        set.skipped
            .iter()
            .map(|s| json!({"id": s.id, "error": s.error})),
    );
    Ok(out)
}

/// Predicted error steps of one trajectory by one method.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub id: String,
    pub method: Method,
    /// Per-action-step scores the predictors saw (unscored = 0.0).
    pub values: Vec<f64>,
    /// Predicted action-step index, in [`Predictor::ALL`] order.
    pub picks: [usize; 3],
    /// Message index of each pick, where the steps name their messages.
    pub pick_messages: [Option<usize>; 3],
    pub label: Option<(LabelUnit, usize)>,
}

/// Predict the decisive error of `t` by every predictor from `method`'s step
/// scores (a step without tokens, truncated or empty, counts as 0.0);
/// `None` when a step with tokens has no value or no step has one
/// ([`unattributable`] says which): never a prediction around a missing step.
pub fn attribute(
    t: &ScoredTrajectory,
    method: Method,
    token: Option<TokenAgg>,
) -> Result<Option<Attribution>> {
    let values = t.step_values(method, token)?;
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let Some(values) = values
        .into_iter()
        .zip(&t.steps)
        .map(|(v, s)| v.or(s.unscored().then_some(0.0)))
        .collect::<Option<Vec<f64>>>()
    else {
        return Ok(None);
    };
    let mut picks = [0; 3];
    for (slot, p) in picks.iter_mut().zip(Predictor::ALL) {
        match p.predict(&values) {
            Some(k) => *slot = k,
            None => return Ok(None),
        }
    }
    let pick_messages = picks.map(|k| t.steps[k].message);
    Ok(Some(Attribution {
        id: t.id.clone(),
        method,
        values,
        picks,
        pick_messages,
        label: error_label(t),
    }))
}

impl Attribution {
    pub fn pick(&self, p: Predictor) -> usize {
        self.picks[p as usize]
    }

    /// The pick of `p` and the label, both in the label's unit; `None`
    /// without a label. An error when the label is a message index and the
    /// picked step does not name its message.
    pub fn compare(&self, p: Predictor, location: &str) -> Result<Option<(usize, usize)>> {
        let Some((unit, label)) = self.label else {
            return Ok(None);
        };
        let k = self.pick(p);
        let predicted = match unit {
            LabelUnit::ActionStep => k,
            LabelUnit::Message => self.pick_messages[p as usize].ok_or_else(|| {
                Error::input(
                    location,
                    format!(
                        "field `steps[{k}].message`: missing; needed to compare with `mistake_step`"
                    ),
                )
            })?,
        };
        Ok(Some((predicted, label)))
    }

    /// The label as an action-step index, for charts: `failure_step` itself,
    /// or the step whose message is `mistake_step`.
    pub fn label_step(&self, t: &ScoredTrajectory) -> Option<usize> {
        match self.label? {
            (LabelUnit::ActionStep, s) => Some(s),
            (LabelUnit::Message, m) => t.steps.iter().position(|s| s.message == Some(m)),
        }
    }

    /// One JSON object per trajectory for `padv attribute`.
    pub fn to_json(&self) -> Value {
        let mut picks = serde_json::Map::new();
        for p in Predictor::ALL {
            let i = p as usize;
            picks.insert(
                p.name().to_string(),
                json!({"step": self.picks[i], "message": self.pick_messages[i]}),
            );
        }
        let label = self.label.map_or(
            Value::Null,
            |(unit, v)| json!({"field": unit.field(), "value": v}),
        );
        json!({
            "id": self.id,
            "method": self.method.name(),
            "step_scores": self.values,
            "predictions": picks,
            "label": label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predict(p: Predictor, v: &[f64]) -> usize {
        p.predict(v).unwrap()
    }

    #[test]
    fn min_cumulative_picks_where_the_running_sum_bottoms_out() {
        // Running sums: 1, -1, -4, -2.
        assert_eq!(
            predict(Predictor::MinCumulative, &[1.0, -2.0, -3.0, 2.0]),
            2
        );
        // Running sums 1, 0, 1, 0: tie between 1 and 3 → earliest.
        assert_eq!(
            predict(Predictor::MinCumulative, &[1.0, -1.0, 1.0, -1.0]),
            1
        );
        // All positive: the first step has the lowest running sum.
        assert_eq!(predict(Predictor::MinCumulative, &[0.5, 0.1]), 0);
    }

    #[test]
    fn sharpest_drop_picks_the_lowest_step_or_the_first_when_none_is_negative() {
        assert_eq!(predict(Predictor::SharpestDrop, &[0.2, -1.0, 0.3, -4.0]), 3);
        assert_eq!(predict(Predictor::SharpestDrop, &[0.0, -2.0, -2.0]), 1);
        assert_eq!(predict(Predictor::SharpestDrop, &[3.0, 0.0, 1.0]), 0);
    }

    #[test]
    fn sharpest_abs_drop_picks_the_step_after_the_largest_fall() {
        // Changes: -3, +1, -0.5 → the step after the -3 fall.
        assert_eq!(
            predict(Predictor::SharpestAbsDrop, &[1.0, -2.0, -1.0, -1.5]),
            1
        );
        // Equal falls of -2 at steps 1 and 3 → earliest.
        assert_eq!(
            predict(Predictor::SharpestAbsDrop, &[2.0, 0.0, 2.0, 0.0]),
            1
        );
        // Only rises: the first step.
        assert_eq!(predict(Predictor::SharpestAbsDrop, &[-3.0, -2.0, 0.0]), 0);
        // A flat change (0) counts as a drop.
        assert_eq!(predict(Predictor::SharpestAbsDrop, &[1.0, 2.0, 2.0]), 2);
        assert_eq!(predict(Predictor::SharpestAbsDrop, &[-5.0]), 0);
    }

    #[test]
    fn no_steps_means_no_prediction() {
        for p in Predictor::ALL {
            assert_eq!(p.predict(&[]), None);
        }
    }

    #[test]
    fn a_method_without_any_step_values_predicts_nothing() {
        use crate::score::scored::{ScoreSettings, StepScore};
        let steps = vec![StepScore {
            advantage: Some(-1.0),
            ..StepScore::default()
        }];
        let t = ScoredTrajectory::new("n", steps, ScoreSettings::default());
        assert_eq!(attribute(&t, Method::Entropy, None).unwrap(), None);
        assert!(
            attribute(&t, Method::ProgressAdvantage, None)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_step_with_tokens_but_no_value_leaves_no_prediction_and_says_which() {
        use crate::score::scored::{ScoreSettings, StepScore};
        let valued = |a: f64| StepScore {
            advantage: Some(a),
            ..StepScore::default()
        };
        let cut = StepScore {
            truncated: true,
            ..StepScore::default()
        };
        // A truncated step counts 0.0 …
        let t = ScoredTrajectory::new(
            "c",
            vec![valued(1.0), cut, valued(-1.0)],
            ScoreSettings::default(),
        );
        let a = attribute(&t, Method::ProgressAdvantage, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.values, [1.0, 0.0, -1.0]);
        // … a step whose value is missing does not.
        let t = ScoredTrajectory::new(
            "m",
            vec![valued(1.0), StepScore::default(), valued(-1.0)],
            ScoreSettings::default(),
        );
        assert_eq!(
            attribute(&t, Method::ProgressAdvantage, None).unwrap(),
            None
        );
        let why = unattributable(&t, Method::ProgressAdvantage);
        assert!(why.contains("step 1 has tokens but no"), "{why}");
    }

    #[test]
    fn who_and_when_labels_compare_message_indices() {
        use crate::score::scored::{Labels, ScoreSettings, StepScore};
        let steps = [(2, 0.5), (4, -2.0), (6, 0.1)]
            .map(|(m, a)| StepScore {
                message: Some(m),
                advantage: Some(a),
                ..StepScore::default()
            })
            .to_vec();
        let t = ScoredTrajectory::new("w", steps, ScoreSettings::default()).with_labels(Labels {
            mistake_step: Some(4),
            ..Labels::default()
        });
        let a = attribute(&t, Method::ProgressAdvantage, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.pick(Predictor::SharpestDrop), 1);
        assert_eq!(
            a.compare(Predictor::SharpestDrop, "x").unwrap(),
            Some((4, 4))
        );
        assert_eq!(a.label_step(&t), Some(1));
        assert_eq!(a.to_json()["predictions"]["sharpest_drop"]["message"], 4);
    }
}
