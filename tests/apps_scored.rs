//! `padv score`-style records with token arrays, end to end through the
//! library: parsing (with an error record), re-aggregation from tokens
//! agreeing with the stored step values, the sweep, best-of-N passing the
//! original records through, and Who&When message-index labels.

use padv::apps::attribute::{Predictor, attribute};
use padv::apps::eval::{evaluate, sweep, sweep_json, sweep_markdown};
use padv::apps::method::{Aggregation, Method};
use padv::apps::report::{ReportOptions, render_html};
use padv::apps::scored::{ReadOptions, ScoredSet, parse_scored};
use padv::apps::select::select;
use padv::score::aggregate::{StepAgg, TokenAgg};
use serde_json::{Value, json};

/// A small deterministic generator; values are multiples of 1/64 so f32
/// storage is exact.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % 256) as f64 / 64.0
    }
}

/// One record: a system message, then user/assistant turns; each action has
/// 2–4 tokens. Successful rollouts get a positive advantage drift.
fn record(i: usize, rng: &mut Lcg) -> Value {
    let success = i.is_multiple_of(3);
    let n_steps = 3 + i % 4;
    let mut pos = 5; // tokens before the first action
    let (mut lp, mut lr, mut ent, mut sc) = (
        vec![Value::Null; pos],
        vec![Value::Null; pos],
        vec![Value::Null; pos],
        vec![Value::Null; pos],
    );
    let mut steps = Vec::new();
    for k in 0..n_steps {
        let len = 2 + (i + k) % 3;
        let (start, end) = (pos, pos + len);
        let (mut sp, mut sr, mut se, mut ss) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..len {
            let p = -rng.next() / 2.0;
            let bad = !success && k == n_steps / 2;
            let r = p - 0.5 + rng.next() / 4.0 + if bad { 1.0 } else { 0.0 }
                - if success { 0.25 } else { 0.0 };
            let e = rng.next() / 2.0;
            let c = -1.0 - rng.next();
            (sp, sr, se, ss) = (sp + p, sr + r, se + e, ss + c);
            lp.push(json!(p));
            lr.push(json!(r));
            ent.push(json!(e));
            sc.push(json!(c));
        }
        steps.push(json!({
            "step": k, "message": 2 + 2 * k, "n_tokens": len,
            "advantage": sp - sr, "logp_policy": sp, "logp_reference": sr,
            "entropy": se / len as f64, "self_certainty": ss / len as f64,
            "truncated": false, "span": [start, end],
        }));
        // Observation tokens after the action are unscored.
        pos = end + 3;
        for _ in 0..3 {
            for v in [&mut lp, &mut lr, &mut ent, &mut sc] {
                v.push(Value::Null);
            }
        }
    }
    let n = lp.len();
    json!({
        "id": format!("r{i}"), "task_id": format!("task-{}", i % 4), "success": success,
        "mistake_step": if success { Value::Null } else { json!(2 + 2 * (n_steps / 2)) },
        "history": [],
        "steps": steps,
        "tokens": {"token_ids": vec![7; n], "logp_policy": lp, "logp_reference": lr,
                   "advantage": Value::Null, "entropy_policy": ent, "self_certainty": sc,
                   "action_mask": vec![0; n]},
        "score": 0.0, "baselines": {},
        "settings": {"token_agg": "sum", "step_agg": "mean", "beta": 1.0, "render": "template"},
    })
}

fn jsonl() -> String {
    let mut rng = Lcg(42);
    let mut lines: Vec<String> = (0..16).map(|i| record(i, &mut rng).to_string()).collect();
    lines.insert(
        5,
        json!({"id": "broken", "error": "context too long"}).to_string(),
    );
    lines.join("\n") + "\n"
}

fn set() -> ScoredSet {
    parse_scored(jsonl().as_bytes(), "scored.jsonl", &ReadOptions::default()).unwrap()
}

fn assert_json_close(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                if k != "settings" {
                    assert_json_close(v, &y[k], &format!("{path}.{k}"));
                }
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() < 1e-9, "{path}: {x} vs {y}");
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn error_records_are_counted_and_left_out() {
    let s = set();
    assert_eq!(s.trajectories.len(), 16);
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].location, "scored.jsonl:6");
    let j = evaluate(&s, None).unwrap().to_json();
    assert_eq!(j["skipped"]["error_records"], 1);
    assert_eq!(j["uncertainty"]["entropy"]["n"], 16);
}

#[test]
fn re_aggregating_tokens_with_the_stored_settings_reproduces_the_stored_evaluation() {
    // Stored values: sum for advantage and log-probs, mean for the certainty
    // baselines; re-aggregating each the same way must agree.
    let s = set();
    let stored = evaluate(&s, None).unwrap().to_json();
    for (token, methods) in [
        (TokenAgg::Sum, &Method::ALL[..3]),
        (TokenAgg::Mean, &Method::ALL[3..]),
    ] {
        let agg = Aggregation {
            token: Some(token),
            step: StepAgg::Mean,
        };
        let again = evaluate(&s, Some(agg)).unwrap().to_json();
        assert_eq!(again["settings"]["reaggregated_from_tokens"], true);
        for m in methods {
            let m = m.name();
            for section in ["uncertainty", "attribution"] {
                assert_json_close(
                    &stored[section][m],
                    &again[section][m],
                    &format!("{section}.{m}"),
                );
            }
            assert_json_close(&stored["best_of_n"][m], &again["best_of_n"][m], m);
        }
    }
}

#[test]
fn sweep_covers_every_token_and_step_aggregation() {
    let reports = sweep(&set()).unwrap();
    assert_eq!(reports.len(), TokenAgg::ALL.len() * StepAgg::ALL.len());
    let md = sweep_markdown(&reports);
    assert_eq!(md.lines().count(), 2 + reports.len() * Method::ALL.len());
    let j = sweep_json(&reports);
    assert_eq!(j["sweep"][0]["settings"]["token_agg"], "mean");
    assert_eq!(j["sweep"][29]["settings"]["step_agg"], "bottom10");
}

#[test]
fn best_of_n_passes_the_chosen_records_through() {
    let s = set();
    let sel = select(
        &s.trajectories,
        Method::ProgressAdvantage,
        Aggregation::stored(StepAgg::Mean),
    )
    .unwrap();
    assert_eq!(sel.groups.len(), 4);
    for g in &sel.groups {
        let chosen = &s.trajectories[g.chosen];
        let record = chosen.record.as_ref().unwrap();
        assert_eq!(record["task_id"], g.group.as_str());
        assert_eq!(record["id"], chosen.id.as_str());
        assert!(g.ranking.windows(2).all(|w| w[0].score >= w[1].score));
    }
    let records = sel.chosen_records(&s.trajectories);
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|r| r["tokens"].is_object() && r["best_of_n"]["method"] == "progress_advantage")
    );
}

#[test]
fn mistake_step_labels_are_compared_as_message_indices() {
    let s = set();
    let t = s
        .trajectories
        .iter()
        .find(|t| t.labels.mistake_step.is_some())
        .unwrap();
    let a = attribute(t, Method::ProgressAdvantage, None)
        .unwrap()
        .unwrap();
    let (pred, label) = a
        .compare(Predictor::SharpestDrop, &t.location)
        .unwrap()
        .unwrap();
    // From the record itself: its `mistake_step`, and the message of its
    // lowest-advantage step (the earliest; the first step when none is < 0).
    let record = t.record.as_ref().unwrap();
    assert_eq!(Some(label as u64), record["mistake_step"].as_u64());
    let steps = record["steps"].as_array().unwrap();
    let adv = |k: usize| steps[k]["advantage"].as_f64().unwrap();
    let lowest = (0..steps.len())
        .filter(|&k| adv(k) < 0.0)
        .min_by(|&a, &b| adv(a).total_cmp(&adv(b)))
        .unwrap_or(0);
    assert_eq!(Some(pred as u64), steps[lowest]["message"].as_u64());
    let j = evaluate(&s, None).unwrap().to_json();
    assert_eq!(j["label_units"]["mistake_step"]["n"], 10);
    assert_eq!(j["label_units"]["failure_step"]["n"], 0);
}

#[test]
fn the_report_charts_every_method_when_all_baselines_are_present() {
    let s = set();
    let report = evaluate(&s, None).unwrap();
    let html = render_html(&s, &report, &ReportOptions::default()).unwrap();
    assert!(!html.contains("no scores"));
    assert!(html.contains("DeepConf bottom-10%"));
    // Best-of-N baselines from the records' own labels: per task, the
    // fraction of successful rollouts (Mean@N) and whether any succeeded.
    let mut tasks: Vec<(String, Vec<bool>)> = Vec::new();
    for t in &s.trajectories {
        let r = t.record.as_ref().unwrap();
        let (task, ok) = (r["task_id"].as_str().unwrap(), r["success"] == true);
        match tasks.iter_mut().find(|g| g.0 == task) {
            Some(g) => g.1.push(ok),
            None => tasks.push((task.to_string(), vec![ok])),
        }
    }
    let per_task =
        |f: fn(&[bool]) -> f64| tasks.iter().map(|g| f(&g.1)).sum::<f64>() / tasks.len() as f64;
    let mean_at_n = per_task(|v| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64);
    let pass_at_n = per_task(|v| f64::from(u8::from(v.contains(&true))));
    let note = format!(
        "Best-of-N over {} groups: Mean@N {mean_at_n:.3}, Pass@N {pass_at_n:.3}.",
        tasks.len()
    );
    assert!(html.contains(&note), "no `{note}` in the report");
    assert!(html.contains("16 trajectories (1 error record skipped)"));
    if let Ok(out) = std::env::var("PADV_SYNTH_REPORT_OUT") {
        std::fs::write(out, &html).unwrap();
    }
}
