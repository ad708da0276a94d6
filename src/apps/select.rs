//! Best-of-N selection: in every group (rollouts of one task) keep the
//! highest-scoring trajectory, as `runners/tau2_bon.py` does with a stable
//! descending sort — so among tied scores the earliest trajectory wins. A
//! trajectory without a score (no steps, or a step whose value is missing) is
//! left out and counted in [`Selection::left_out`]; a group left with no
//! scored rollout has no pick.

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::{Value, json};

use super::eval::same_settings;
use crate::Error;
use crate::Result;
use crate::score::method::{Aggregation, Method};
use crate::score::num;
use crate::score::scored::ScoredTrajectory;

/// One candidate of a group, as ranked.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// Index into the trajectories passed to [`select`].
    pub index: usize,
    pub id: String,
    pub score: Option<f64>,
    pub success: Option<bool>,
}

/// The pick of one group and how every candidate ranked.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPick {
    pub group: String,
    /// Index into the trajectories passed to [`select`].
    pub chosen: usize,
    /// Best first; ties keep input order.
    pub ranking: Vec<Ranked>,
    /// Whether another candidate had exactly the chosen score.
    pub tied: bool,
}

/// The result of best-of-N over all groups, in order of first appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub method: Method,
    pub aggregation: Aggregation,
    pub groups: Vec<GroupPick>,
    /// Indices of the trajectories left out for having no score.
    pub left_out: Vec<usize>,
}

/// Pick the best trajectory of each group by `method`. Every trajectory must
/// have a group (the `--group-by` field), and all must share their scoring
/// settings ([`same_settings`]).
pub fn select(
    trajectories: &[ScoredTrajectory],
    method: Method,
    aggregation: Aggregation,
) -> Result<Selection> {
    same_settings(trajectories)?;
    let mut members: Vec<(String, Vec<usize>)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    for (i, t) in trajectories.iter().enumerate() {
        let Some(g) = &t.group else {
            return Err(Error::input(
                &t.location,
                "no group field for best-of-N (set --group-by to the field naming the task)",
            ));
        };
        let at = *slot.entry(g.clone()).or_insert_with(|| {
            members.push((g.clone(), Vec::new()));
            members.len() - 1
        });
        members[at].1.push(i);
    }
    let mut groups = Vec::with_capacity(members.len());
    let mut left_out = Vec::new();
    for (group, idx) in members {
        let mut ranking = Vec::with_capacity(idx.len());
        for i in idx {
            let t = &trajectories[i];
            let score = t.score(method, aggregation)?;
            if score.is_none() {
                left_out.push(i);
                continue;
            }
            ranking.push(Ranked {
                index: i,
                id: t.id.clone(),
                score,
                success: t.labels.success,
            });
        }
        if ranking.is_empty() {
            continue;
        }
        rank_best_first(&mut ranking);
        let best = ranking[0].score;
        let tied = ranking[1..]
            .iter()
            .any(|r| r.score == best && best.is_some());
        groups.push(GroupPick {
            group,
            chosen: ranking[0].index,
            ranking,
            tied,
        });
    }
    Ok(Selection {
        method,
        aggregation,
        groups,
        left_out,
    })
}

/// Stable sort: higher scores first, unscored last, ties in input order.
pub fn rank_best_first(ranking: &mut [Ranked]) {
    ranking.sort_by(|a, b| match (a.score, b.score) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

impl Selection {
    /// Indices of the chosen trajectories, one per group.
    pub fn chosen(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.chosen).collect()
    }

    /// The chosen trajectories' records (`trajectories` as passed to
    /// [`select`]), each with a `best_of_n` object added: group, method,
    /// score, number of candidates and whether the pick was a tie.
    /// Trajectories scored in memory without a record appear as `{"id"}`.
    pub fn chosen_records(&self, trajectories: &[ScoredTrajectory]) -> Vec<Value> {
        self.groups
            .iter()
            .filter_map(|g| {
                let t = trajectories.get(g.chosen)?;
                let mut record = match &t.record {
                    Some(Value::Object(m)) => m.clone(),
                    _ => {
                        let mut m = serde_json::Map::new();
                        m.insert("id".into(), json!(t.id));
                        m
                    }
                };
                record.insert(
                    "best_of_n".into(),
                    json!({
                        "group": g.group,
                        "method": self.method.name(),
                        "score": g.ranking[0].score.map_or(Value::Null, num),
                        "n_candidates": g.ranking.len(),
                        "tied": g.tied,
                    }),
                );
                Some(Value::Object(record))
            })
            .collect()
    }

    /// The rank table as JSON: one entry per group with every candidate.
    pub fn to_json(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| {
                let ranking: Vec<Value> = g
                    .ranking
                    .iter()
                    .map(|r| json!({"id": r.id, "score": r.score.map_or(Value::Null, num), "success": r.success}))
                    .collect();
                json!({"group": g.group, "chosen": g.ranking[0].id, "tied": g.tied, "ranking": ranking})
            })
            .collect();
        json!({
            "method": self.method.name(),
            "token_agg": self.aggregation.token.map(|t| t.name()),
            "step_agg": self.method.step_agg(self.aggregation.step).name(),
            "ties": "earliest input index wins",
            "groups": groups,
        })
    }

    /// The rank table as Markdown (for `--explain`).
    pub fn explain_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Best-of-N by `{}` (step aggregation `{}`); ties go to the earliest rollout.\n",
            self.method,
            self.method.step_agg(self.aggregation.step)
        );
        for g in &self.groups {
            let _ = writeln!(
                out,
                "### {}{}\n",
                g.group,
                if g.tied { " (tie)" } else { "" }
            );
            let _ = writeln!(out, "| rank | id | score | success | |");
            let _ = writeln!(out, "|---:|---|---:|:---:|---|");
            for (k, r) in g.ranking.iter().enumerate() {
                let score = r.score.map_or("–".to_string(), |s| format!("{s:.4}"));
                let success = match r.success {
                    Some(true) => "✓",
                    Some(false) => "✗",
                    None => "?",
                };
                let mark = if k == 0 { "**chosen**" } else { "" };
                let _ = writeln!(
                    out,
                    "| {} | {} | {score} | {success} | {mark} |",
                    k + 1,
                    r.id
                );
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::aggregate::StepAgg;
    use crate::score::scored::{Labels, ScoreSettings, StepScore};

    fn t(id: &str, group: &str, adv: f64, success: bool) -> ScoredTrajectory {
        let step = StepScore {
            advantage: Some(adv),
            ..StepScore::default()
        };
        ScoredTrajectory::new(id, vec![step], ScoreSettings::default())
            .with_group(group)
            .with_labels(Labels {
                success: Some(success),
                ..Labels::default()
            })
    }

    #[test]
    fn select_keeps_the_highest_score_per_group_in_first_appearance_order() {
        let ts = vec![
            t("a0", "a", 0.1, false),
            t("b0", "b", 0.7, true),
            t("a1", "a", 0.5, true),
            t("b1", "b", -0.2, false),
        ];
        let s = select(
            &ts,
            Method::ProgressAdvantage,
            Aggregation::stored(StepAgg::Mean),
        )
        .unwrap();
        assert_eq!(s.chosen(), vec![2, 1]);
        assert_eq!(s.groups[0].group, "a");
        assert_eq!(s.groups[0].ranking[1].id, "a0");
        assert!(!s.groups[0].tied);
    }

    #[test]
    fn select_breaks_ties_towards_the_earliest_rollout() {
        let ts = vec![
            t("x0", "g", 0.2, false),
            t("x1", "g", 0.9, false),
            t("x2", "g", 0.9, true),
        ];
        let s = select(
            &ts,
            Method::ProgressAdvantage,
            Aggregation::stored(StepAgg::Mean),
        )
        .unwrap();
        assert_eq!(s.chosen(), vec![1]);
        assert!(s.groups[0].tied);
        assert!(s.explain_markdown().contains("(tie)"));
        assert_eq!(s.to_json()["groups"][0]["chosen"], "x1");
        let records = s.chosen_records(&ts);
        assert_eq!(records[0]["id"], "x1");
        assert_eq!(records[0]["best_of_n"]["tied"], true);
        assert_eq!(records[0]["best_of_n"]["n_candidates"], 3);
    }

    #[test]
    fn unscored_rollouts_are_left_out_and_counted() {
        let none = ScoredTrajectory::new("n", vec![], ScoreSettings::default()).with_group("g");
        let missing =
            ScoredTrajectory::new("m", vec![StepScore::default()], ScoreSettings::default())
                .with_group("h");
        let ts = vec![none, t("s", "g", -3.0, false), missing];
        let s = select(
            &ts,
            Method::ProgressAdvantage,
            Aggregation::stored(StepAgg::Mean),
        )
        .unwrap();
        assert_eq!(s.chosen(), vec![1]);
        assert_eq!(s.groups[0].ranking.len(), 1);
        assert_eq!(s.left_out, vec![0, 2]);
    }

    #[test]
    fn a_trajectory_without_a_group_is_an_error() {
        let ts = vec![ScoredTrajectory::new("n", vec![], ScoreSettings::default())];
        let e = select(
            &ts,
            Method::ProgressAdvantage,
            Aggregation::stored(StepAgg::Mean),
        );
        assert!(e.unwrap_err().to_string().contains("--group-by"));
    }
}
