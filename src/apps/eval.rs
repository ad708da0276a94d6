//! Evaluation of progress advantage and every baseline in the paper's three
//! scenarios, on labelled scored trajectories:
//!
//! - **uncertainty** (`runners/tau2_uq.py`): AUROC of the trajectory score
//!   against success, Spearman ρ against the reward; over trajectories with a
//!   label and a score.
//! - **best-of-N** (`runners/tau2_bon.py`): success rate of each method's pick
//!   per group, beside Mean@N (mean success of a group's rollouts, averaged
//!   over groups) and Pass@N (share of groups with any success).
//! - **attribution** (`runners/fa.py`): exact-step accuracy and mean absolute
//!   error of each predictor, over trajectories with an error label, each
//!   label compared in its own unit (`label_units`).
//!
//! Undefined numbers (one class only, no labelled trajectory) are `null` in
//! JSON and `–` in Markdown.

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::{Map, Value, json};

use crate::apps::attribute::{LabelUnit, Predictor, attribute, error_label};
use crate::apps::metrics::{auroc, mean, spearman};
use crate::apps::select::{Ranked, rank_best_first};
use crate::score::aggregate::{StepAgg, TokenAgg};
use crate::score::method::{Aggregation, Method};
use crate::score::num;
use crate::score::scored::{ScoreSettings, ScoredSet, ScoredTrajectory};
use crate::{Error, Result};

/// How well one method's trajectory score predicts the outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uncertainty {
    pub auroc: f64,
    pub spearman: f64,
    pub n: usize,
}

/// Best-of-N success of each method's pick, and the two reference points.
#[derive(Debug, Clone, PartialEq)]
pub struct BestOfN {
    pub n_groups: usize,
    /// Groups left out for a rollout without a success label (the pick
    /// could be one whose outcome is unknown).
    pub unlabelled_groups: usize,
    pub mean_at_n: f64,
    pub pass_at_n: f64,
    /// Success rate of the picks, per method in [`Method::ALL`] order.
    pub success: Vec<(Method, f64)>,
}

/// Accuracy of one predictor over the labelled trajectories.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttributionScore {
    pub accuracy: f64,
    pub mae: f64,
    pub n: usize,
}

/// All metrics of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// The aggregation evaluated, with the records' β and rendering.
    pub settings: ScoreSettings,
    /// Whether step values were re-aggregated from token arrays.
    pub reaggregated: bool,
    pub uncertainty: Vec<(Method, Uncertainty)>,
    pub best_of_n: BestOfN,
    /// Per method, one score per predictor in [`Predictor::ALL`] order.
    pub attribution: Vec<(Method, [AttributionScore; 3])>,
    /// How many attribution labels were counted in each unit.
    pub label_units: Vec<(LabelUnit, usize)>,
    /// Attribution labels left out for naming a step the trajectory does not
    /// have ([`label_in_range`]).
    pub labels_out_of_range: usize,
    pub n_trajectories: usize,
    pub skipped_error_records: usize,
    /// Trajectories without a progress-advantage score (a step value
    /// missing, or no steps), left out of its metrics.
    pub unscored: usize,
}

/// The settings every trajectory in `set` shares; an error when they differ.
pub fn common_settings(set: &ScoredSet) -> Result<ScoreSettings> {
    let Some(first) = set.trajectories.first() else {
        return Err(Error::input(
            "input",
            format!(
                "no scored trajectories to evaluate ({} skipped)",
                error_records(set.skipped.len())
            ),
        ));
    };
    same_settings(&set.trajectories)?;
    Ok(first.settings.clone())
}

/// An error naming the first trajectory scored with another β or another
/// token or step aggregation than the first: their scores are on different
/// scales and are never ranked or evaluated together.
pub fn same_settings(trajectories: &[ScoredTrajectory]) -> Result<()> {
    let Some(first) = trajectories.first() else {
        return Ok(());
    };
    for t in &trajectories[1..] {
        let (a, b) = (&first.settings, &t.settings);
        if a.token_agg != b.token_agg || a.step_agg != b.step_agg || a.beta != b.beta {
            return Err(Error::input(
                &t.location,
                format!(
                    "scored with token_agg={} step_agg={} beta={}, but {} with token_agg={} \
                     step_agg={} beta={}: their scores are on different scales; select or evaluate them separately",
                    b.token_agg,
                    b.step_agg,
                    b.beta,
                    first.location,
                    a.token_agg,
                    a.step_agg,
                    a.beta
                ),
            ));
        }
    }
    Ok(())
}

/// Evaluate every method. `aggregation: None` uses the records' own settings
/// and stored step values.
pub fn evaluate(set: &ScoredSet, aggregation: Option<Aggregation>) -> Result<EvalReport> {
    let stored = common_settings(set)?;
    let agg = aggregation.unwrap_or(Aggregation::stored(stored.step_agg));
    let trajectories = &set.trajectories;

    let mut scores: HashMap<Method, Vec<Option<f64>>> = HashMap::new();
    for m in Method::ALL {
        let s = trajectories
            .iter()
            .map(|t| t.score(m, agg))
            .collect::<Result<Vec<_>>>()?;
        scores.insert(m, s);
    }

    let uncertainty = Method::ALL
        .iter()
        .map(|&m| (m, uncertainty_of(trajectories, &scores[&m])))
        .collect();
    let best_of_n = best_of_n(trajectories, &scores);
    let (attribution, label_units, labels_out_of_range) = attribution(trajectories, agg.token)?;

    Ok(EvalReport {
        settings: ScoreSettings {
            token_agg: agg.token.unwrap_or(stored.token_agg),
            step_agg: agg.step,
            beta: stored.beta,
            render: stored.render,
        },
        reaggregated: agg.token.is_some(),
        uncertainty,
        best_of_n,
        attribution,
        label_units,
        labels_out_of_range,
        n_trajectories: trajectories.len(),
        skipped_error_records: set.skipped.len(),
        unscored: scores[&Method::ProgressAdvantage]
            .iter()
            .filter(|s| s.is_none())
            .count(),
    })
}

/// Every token aggregation × step aggregation, re-aggregated from the token
/// arrays; an error naming the first trajectory without them.
pub fn sweep(set: &ScoredSet) -> Result<Vec<EvalReport>> {
    common_settings(set)?;
    if let Some(t) = set.trajectories.iter().find(|t| t.tokens.is_none()) {
        return Err(Error::input(
            &t.location,
            "--sweep re-aggregates from per-token arrays, and this record has none; \
             score with `padv score --tokens`",
        ));
    }
    let mut out = Vec::new();
    for token in TokenAgg::ALL {
        for step in StepAgg::ALL {
            let agg = Aggregation {
                token: Some(token),
                step,
            };
            out.push(evaluate(set, Some(agg))?);
        }
    }
    Ok(out)
}

fn uncertainty_of(trajectories: &[ScoredTrajectory], scores: &[Option<f64>]) -> Uncertainty {
    let (mut s, mut success, mut reward) = (Vec::new(), Vec::new(), Vec::new());
    for (t, score) in trajectories.iter().zip(scores) {
        if let (Some(score), Some(ok), Some(r)) = (score, t.labels.success, t.labels.reward) {
            s.push(*score);
            success.push(ok);
            reward.push(r);
        }
    }
    Uncertainty {
        auroc: auroc(&s, &success),
        spearman: spearman(&s, &reward),
        n: s.len(),
    }
}

/// Groups whose every rollout has a success label, in order of first
/// appearance, and how many groups were left out for an unlabelled rollout.
fn labelled_groups(trajectories: &[ScoredTrajectory]) -> (Vec<Vec<usize>>, usize) {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for (i, t) in trajectories.iter().enumerate() {
        if let Some(g) = &t.group {
            let at = *slot.entry(g.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[at].push(i);
        }
    }
    let all = groups.len();
    groups.retain(|g| g.iter().all(|&i| trajectories[i].labels.success.is_some()));
    let left_out = all - groups.len();
    (groups, left_out)
}

fn best_of_n(
    trajectories: &[ScoredTrajectory],
    scores: &HashMap<Method, Vec<Option<f64>>>,
) -> BestOfN {
    let ok = |i: usize| trajectories[i].labels.success == Some(true);
    let as_f = |b: bool| if b { 1.0 } else { 0.0 };
    let (groups, unlabelled_groups) = labelled_groups(trajectories);
    let group_means: Vec<f64> = groups
        .iter()
        .map(|g| mean(&g.iter().map(|&i| as_f(ok(i))).collect::<Vec<_>>()))
        .collect();
    let any: Vec<f64> = groups
        .iter()
        .map(|g| as_f(g.iter().any(|&i| ok(i))))
        .collect();
    let success = Method::ALL
        .iter()
        .map(|&m| {
            let s = &scores[&m];
            if groups.iter().flatten().all(|&i| s[i].is_none()) {
                return (m, f64::NAN);
            }
            let picks: Vec<f64> = groups
                .iter()
                .filter_map(|g| {
                    let mut ranking: Vec<Ranked> = g
                        .iter()
                        .filter(|&&i| s[i].is_some())
                        .map(|&i| Ranked {
                            index: i,
                            id: String::new(),
                            score: s[i],
                            success: None,
                        })
                        .collect();
                    rank_best_first(&mut ranking);
                    Some(as_f(ok(ranking.first()?.index)))
                })
                .collect();
            (m, mean(&picks))
        })
        .collect();
    BestOfN {
        n_groups: groups.len(),
        unlabelled_groups,
        mean_at_n: mean(&group_means),
        pass_at_n: mean(&any),
        success,
    }
}

type AttributionTable = Vec<(Method, [AttributionScore; 3])>;

/// Whether a trajectory's error label names a step it has: `failure_step`
/// below the number of action steps, `mistake_step` at most the last action's
/// message (a scored record does not say how many messages followed it).
pub fn label_in_range(t: &ScoredTrajectory) -> bool {
    match error_label(t) {
        Some((LabelUnit::ActionStep, s)) => s < t.steps.len(),
        Some((LabelUnit::Message, m)) => t
            .steps
            .iter()
            .filter_map(|s| s.message)
            .max()
            .is_none_or(|last| m <= last),
        None => true,
    }
}

/// The labels counted per unit.
type LabelUnits = Vec<(LabelUnit, usize)>;

/// The attribution table, the labels counted per unit, and the number of
/// labels left out as out of range.
fn attribution(
    trajectories: &[ScoredTrajectory],
    token: Option<TokenAgg>,
) -> Result<(AttributionTable, LabelUnits, usize)> {
    let with_label = || {
        trajectories
            .iter()
            .filter(|t| error_label(t).is_some() && !t.steps.is_empty())
    };
    let out_of_range = with_label().filter(|t| !label_in_range(t)).count();
    let labelled: Vec<&ScoredTrajectory> = with_label().filter(|t| label_in_range(t)).collect();
    let count = |u: LabelUnit| {
        labelled
            .iter()
            .filter(|t| error_label(t).map(|l| l.0) == Some(u))
            .count()
    };
    let units = vec![
        (LabelUnit::ActionStep, count(LabelUnit::ActionStep)),
        (LabelUnit::Message, count(LabelUnit::Message)),
    ];
    let mut table = Vec::new();
    for m in Method::ALL {
        let mut diffs: [Vec<f64>; 3] = Default::default();
        for t in &labelled {
            let Some(a) = attribute(t, m, token)? else {
                continue;
            };
            for p in Predictor::ALL {
                if let Some((pred, label)) = a.compare(p, &t.location)? {
                    diffs[p as usize].push(pred.abs_diff(label) as f64);
                }
            }
        }
        let scores = diffs.map(|d| AttributionScore {
            accuracy: mean(
                &d.iter()
                    .map(|&x| if x == 0.0 { 1.0 } else { 0.0 })
                    .collect::<Vec<_>>(),
            ),
            mae: mean(&d),
            n: d.len(),
        });
        table.push((m, scores));
    }
    Ok((table, units, out_of_range))
}

/// A JSON number, or `null` for NaN and infinities.
impl EvalReport {
    /// The aggregation this report was evaluated with.
    pub fn aggregation(&self) -> Aggregation {
        Aggregation {
            token: self.reaggregated.then_some(self.settings.token_agg),
            step: self.settings.step_agg,
        }
    }

    pub fn uncertainty_of(&self, m: Method) -> Option<&Uncertainty> {
        self.uncertainty
            .iter()
            .find(|(k, _)| *k == m)
            .map(|(_, u)| u)
    }

    pub fn best_of_n_success(&self, m: Method) -> Option<f64> {
        self.best_of_n
            .success
            .iter()
            .find(|(k, _)| *k == m)
            .map(|(_, s)| *s)
    }

    pub fn attribution_of(&self, m: Method, p: Predictor) -> Option<&AttributionScore> {
        self.attribution
            .iter()
            .find(|(k, _)| *k == m)
            .map(|(_, s)| &s[p as usize])
    }

    /// `{"settings", "uncertainty", "best_of_n", "attribution", "label_units", "skipped"}`.
    pub fn to_json(&self) -> Value {
        let mut unc = Map::new();
        for (m, u) in &self.uncertainty {
            unc.insert(
                m.name().into(),
                json!({"auroc": num(u.auroc), "spearman": num(u.spearman), "n": u.n}),
            );
        }
        let b = &self.best_of_n;
        let mut bon = Map::new();
        bon.insert("n_groups".into(), json!(b.n_groups));
        bon.insert("unlabelled_groups".into(), json!(b.unlabelled_groups));
        bon.insert("mean_at_n".into(), num(b.mean_at_n));
        bon.insert("pass_at_n".into(), num(b.pass_at_n));
        for (m, s) in &b.success {
            bon.insert(m.name().into(), json!({"success": num(*s)}));
        }
        let mut att = Map::new();
        for (m, scores) in &self.attribution {
            let mut per = Map::new();
            for p in Predictor::ALL {
                let s = &scores[p as usize];
                per.insert(
                    p.name().into(),
                    json!({"accuracy": num(s.accuracy), "mae": num(s.mae), "n": s.n}),
                );
            }
            att.insert(m.name().into(), Value::Object(per));
        }
        let mut units = Map::new();
        for (u, n) in &self.label_units {
            units.insert(u.field().into(), json!({"unit": u.describe(), "n": n}));
        }
        json!({
            "settings": {
                "token_agg": self.settings.token_agg.name(),
                "step_agg": self.settings.step_agg.name(),
                "beta": self.settings.beta,
                "render": self.settings.render,
                "reaggregated_from_tokens": self.reaggregated,
            },
            "uncertainty": unc,
            "best_of_n": bon,
            "attribution": att,
            "label_units": units,
            "skipped": {
                "error_records": self.skipped_error_records,
                "unscored": self.unscored,
                "labels_out_of_range": self.labels_out_of_range,
            },
        })
    }

    /// One Markdown table: a row per method, with the context under it.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let _ = writeln!(
            out,
            "token_agg `{}`, step_agg `{}`, β = {}; {} trajectories{}{}.\n",
            s.token_agg,
            s.step_agg,
            s.beta,
            self.n_trajectories,
            if self.skipped_error_records > 0 {
                format!(", {} skipped", error_records(self.skipped_error_records))
            } else {
                String::new()
            },
            note(
                ", ",
                self.unscored,
                "without a valid progress-advantage score left out"
            )
        );
        out.push_str(
            "| method | AUROC | Spearman ρ | n | best-of-N | min-cum acc / MAE | \
             sharpest-drop acc / MAE | sharpest-abs-drop acc / MAE |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for m in Method::ALL {
            let u = self.uncertainty_of(m);
            let att = |p| {
                self.attribution_of(m, p).map_or("–".into(), |a| {
                    format!("{} / {}", fmt(a.accuracy), fmt(a.mae))
                })
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                m.name(),
                u.map_or("–".into(), |u| fmt(u.auroc)),
                u.map_or("–".into(), |u| fmt(u.spearman)),
                u.map_or(0, |u| u.n),
                self.best_of_n_success(m).map_or("–".into(), fmt),
                att(Predictor::MinCumulative),
                att(Predictor::SharpestDrop),
                att(Predictor::SharpestAbsDrop),
            );
        }
        let b = &self.best_of_n;
        let _ = writeln!(
            out,
            "\nBest-of-N over {} groups: Mean@N {}, Pass@N {} (ties pick the earliest rollout){}.",
            b.n_groups,
            fmt(b.mean_at_n),
            fmt(b.pass_at_n),
            note(
                "; ",
                b.unlabelled_groups,
                "left out (a rollout without a success label)"
            )
        );
        let units: Vec<String> = self
            .label_units
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(u, n)| format!("{n} by `{}` ({})", u.field(), u.describe()))
            .collect();
        let _ = writeln!(
            out,
            "Attribution labels: {}{}.",
            if units.is_empty() {
                "none".to_string()
            } else {
                units.join("; ")
            },
            note(
                "; ",
                self.labels_out_of_range,
                "out of range (naming a step the trajectory does not have) left out"
            )
        );
        out
    }
}

/// Sweep results as `{"sweep": [report, ...]}`.
pub fn sweep_json(reports: &[EvalReport]) -> Value {
    json!({"sweep": reports.iter().map(EvalReport::to_json).collect::<Vec<_>>()})
}

/// Sweep results as one long Markdown table (token agg × step agg × method).
pub fn sweep_markdown(reports: &[EvalReport]) -> String {
    let mut out = String::from(
        "| token_agg | step_agg | method | AUROC | Spearman ρ | best-of-N | \
         min-cum acc | sharpest-drop acc | sharpest-abs-drop acc |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        for m in Method::ALL {
            let u = r.uncertainty_of(m);
            let acc = |p| {
                r.attribution_of(m, p)
                    .map_or("–".into(), |a| fmt(a.accuracy))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.settings.token_agg,
                m.step_agg(r.settings.step_agg),
                m.name(),
                u.map_or("–".into(), |u| fmt(u.auroc)),
                u.map_or("–".into(), |u| fmt(u.spearman)),
                r.best_of_n_success(m).map_or("–".into(), fmt),
                acc(Predictor::MinCumulative),
                acc(Predictor::SharpestDrop),
                acc(Predictor::SharpestAbsDrop),
            );
        }
    }
    out
}

/// `1 error record`, `3 error records`.
/// `sep`, `n` and `what` when `n > 0`; nothing otherwise.
fn note(sep: &str, n: usize, what: &str) -> String {
    if n > 0 {
        format!("{sep}{n} {what}")
    } else {
        String::new()
    }
}

pub fn error_records(n: usize) -> String {
    format!("{n} error record{}", if n == 1 { "" } else { "s" })
}

/// Three decimals, `–` when undefined.
pub(crate) fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::scored::{Labels, StepScore};

    fn t(
        id: &str,
        g: &str,
        adv: &[f64],
        success: bool,
        failure: Option<usize>,
    ) -> ScoredTrajectory {
        let steps = adv
            .iter()
            .map(|&a| StepScore {
                advantage: Some(a),
                logp_policy: Some(a - 1.0),
                logp_reference: Some(-1.0),
                ..StepScore::default()
            })
            .collect();
        ScoredTrajectory::new(id, steps, ScoreSettings::default())
            .with_group(g)
            .with_labels(Labels {
                success: Some(success),
                reward: Some(if success { 1.0 } else { 0.0 }),
                failure_step: failure,
                mistake_step: None,
            })
    }

    fn small_set() -> ScoredSet {
        ScoredSet::from(vec![
            t("a0", "a", &[0.5, 0.5], true, None),
            t("a1", "a", &[0.5, -1.0, -0.5], false, Some(1)),
            t("b0", "b", &[-0.2, -0.3], false, Some(0)),
            t("b1", "b", &[0.1, 0.0], false, None),
        ])
    }

    #[test]
    fn evaluation_reports_every_method_and_predictor() {
        let r = evaluate(&small_set(), None).unwrap();
        let u = r.uncertainty_of(Method::ProgressAdvantage).unwrap();
        assert_eq!((u.auroc, u.n), (1.0, 4));
        assert!(r.uncertainty_of(Method::Entropy).unwrap().auroc.is_nan());
        assert_eq!(r.best_of_n.n_groups, 2);
        assert_eq!(r.best_of_n.mean_at_n, 0.25);
        assert_eq!(r.best_of_n.pass_at_n, 0.5);
        assert_eq!(r.best_of_n_success(Method::ProgressAdvantage), Some(0.5));
        assert!(r.best_of_n_success(Method::Entropy).unwrap().is_nan());
        // a1: min-cum pick 2 (sums .5,-.5,-1), label 1; b0: pick 1, label 0.
        let mc = r
            .attribution_of(Method::ProgressAdvantage, Predictor::MinCumulative)
            .unwrap();
        assert_eq!((mc.accuracy, mc.mae, mc.n), (0.0, 1.0, 2));
        let sd = r
            .attribution_of(Method::ProgressAdvantage, Predictor::SharpestDrop)
            .unwrap();
        assert_eq!((sd.accuracy, sd.mae), (0.5, 0.5));
        let none = r
            .attribution_of(Method::Entropy, Predictor::SharpestDrop)
            .unwrap();
        assert_eq!(none.n, 0);
        assert!(none.accuracy.is_nan());
    }

    #[test]
    fn json_output_has_the_documented_shape() {
        let j = evaluate(&small_set(), None).unwrap().to_json();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "settings",
                "uncertainty",
                "best_of_n",
                "attribution",
                "label_units",
                "skipped"
            ]
        );
        for m in Method::ALL {
            assert!(j["uncertainty"][m.name()]["n"].is_number());
            assert!(j["best_of_n"][m.name()].get("success").is_some());
            for p in Predictor::ALL {
                assert!(j["attribution"][m.name()][p.name()]["n"].is_number());
            }
        }
        assert!(j["uncertainty"]["entropy"]["auroc"].is_null());
        assert_eq!(j["label_units"]["failure_step"]["n"], 2);
    }

    #[test]
    fn markdown_has_a_row_per_method() {
        let md = evaluate(&small_set(), None).unwrap().to_markdown();
        for m in Method::ALL {
            assert!(md.contains(&format!("| {} |", m.name())), "{md}");
        }
        assert!(md.contains("Mean@N 0.250"));
    }

    #[test]
    fn mixed_settings_and_empty_input_are_errors() {
        let mut set = small_set();
        set.trajectories[1].settings.beta = 2.0;
        assert!(
            evaluate(&set, None)
                .unwrap_err()
                .to_string()
                .contains("separately")
        );
        let e = evaluate(&ScoredSet::default(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no scored trajectories"), "{e}");
    }

    #[test]
    fn sweep_without_token_arrays_names_the_record() {
        let e = sweep(&small_set()).unwrap_err().to_string();
        assert!(
            e.contains("trajectory `a0`") && e.contains("--tokens"),
            "{e}"
        );
    }
}
