//! `padv attribute` and `padv select --explain` with no arguments (the
//! toyworld pair on its trained rollouts: token sum, step mean), value by
//! value against the library on the same records and against transformers'
//! per-step sums (assets/toyworld/expected_steps_demo_trained.jsonl): every
//! step score, predictor pick and label; every group's pick (four groups hold
//! identical rollouts tied for the top: the earliest must win), its rank
//! table with scores and outcomes.

mod cli_common;
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use cli_common::{padv, succeed};
use common::read_all;
use padv::apps::{
    Aggregation, Method, Predictor, ReadOptions, ScoredTrajectory, attribute, select,
};
use padv::backend::Device;
use padv::pipeline::{Scorer, ScorerOptions};
use padv::score::aggregate::{StepAgg, TokenAgg};
use serde_json::Value;

/// Against transformers: the f32 budget of tests/toyworld_steps.rs.
const HF_TOL: f64 = 1e-4;
/// Against the library on the same machine: batches of another composition.
const LIB_TOL: f64 = 1e-5;

fn toyworld() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld")
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The demo records, in file order.
fn demo() -> Vec<Value> {
    jsonl(&std::fs::read_to_string(toyworld().join("demo_trained.jsonl")).unwrap())
}

/// Transformers' step advantages by trajectory id.
fn hf_steps() -> HashMap<String, Vec<f64>> {
    let text = std::fs::read_to_string(toyworld().join("expected_steps_demo_trained.jsonl"));
    jsonl(&text.unwrap())
        .into_iter()
        .map(|v| {
            let steps = v["steps"].as_array().unwrap();
            let steps = steps.iter().map(|x| x.as_f64().unwrap()).collect();
            (v["id"].as_str().unwrap().to_string(), steps)
        })
        .collect()
}

/// The demo scored through the library as the CLI does by default (once,
/// for both tests).
static LIBRARY: LazyLock<Vec<ScoredTrajectory>> = LazyLock::new(library);

fn library() -> Vec<ScoredTrajectory> {
    let tw = toyworld();
    let opts = ScorerOptions {
        device: Device::Cpu,
        token_agg: TokenAgg::Sum,
        ..ScorerOptions::default()
    };
    let mut scorer =
        Scorer::load(&tw.join("models/trained"), &tw.join("models/ref"), opts).unwrap();
    scorer
        .score(&read_all(&tw.join("demo_trained.jsonl")))
        .into_iter()
        .map(|s| {
            let s = s.unwrap();
            let t = ScoredTrajectory::new(s.record.id.clone(), s.steps.clone(), scorer.settings());
            t.with_input_record(scorer.to_json(&s), &ReadOptions::default())
                .unwrap()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    let v = v.as_array().unwrap();
    v.iter().map(|x| x.as_f64().unwrap()).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{what}: {got} vs {want}");
}

#[test]
fn attribute_prints_the_step_scores_picks_and_labels_of_the_library() {
    let out = succeed(padv().args(["attribute", "--device", "cpu"]));
    let lines = jsonl(&String::from_utf8(out.stdout).unwrap());
    let (demo, hf, lib) = (demo(), hf_steps(), &*LIBRARY);
    assert_eq!(lines.len(), demo.len());
    assert_eq!(lib.len(), demo.len());
    for ((line, record), t) in lines.iter().zip(&demo).zip(lib) {
        let id = record["id"].as_str().unwrap();
        assert_eq!(line["id"], id);
        assert_eq!(line["method"], "progress_advantage");
        let a = attribute(t, Method::ProgressAdvantage, None)
            .unwrap()
            .unwrap();
        let scores = floats(&line["step_scores"]);
        assert_eq!(scores.len(), hf[id].len(), "{id}: steps");
        assert_eq!(scores.len(), a.values.len(), "{id}: steps");
        for (k, &s) in scores.iter().enumerate() {
            assert_close(
                &format!("{id} step {k} vs transformers"),
                s,
                hf[id][k],
                HF_TOL,
            );
            assert_close(
                &format!("{id} step {k} vs library"),
                s,
                a.values[k],
                LIB_TOL,
            );
        }
        for p in Predictor::ALL {
            let pick = &line["predictions"][p.name()];
            let step = pick["step"].as_u64().unwrap() as usize;
            assert_eq!(step, a.pick(p), "{id} {p}");
            assert_eq!(
                step,
                p.predict(&hf[id]).unwrap(),
                "{id} {p} on transformers' steps"
            );
            let message = t.steps[step].message.unwrap();
            assert_eq!(pick["message"].as_u64(), Some(message as u64), "{id} {p}");
        }
        let want = match record["failure_step"].as_u64() {
            Some(k) => serde_json::json!({"field": "failure_step", "value": k}),
            None => Value::Null,
        };
        assert_eq!(line["label"], want, "{id}");
    }
}

/// One group's section of `select --explain`: (group, tied, rows of
/// (rank, id, score, success mark, chosen mark)).
type Section = (String, bool, Vec<(usize, String, f64, String, bool)>);

fn explain_sections(markdown: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in markdown.lines() {
        if let Some(head) = line.strip_prefix("### ") {
            let (group, tied) = match head.strip_suffix(" (tie)") {
                Some(g) => (g, true),
                None => (head, false),
            };
            out.push((group.to_string(), tied, Vec::new()));
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(rank) = cells.get(1).and_then(|c| c.parse::<usize>().ok()) else {
            continue;
        };
        let row = (
            rank,
            cells[2].to_string(),
            cells[3].parse::<f64>().unwrap(),
            cells[4].to_string(),
            cells[5] == "**chosen**",
        );
        out.last_mut().expect("a row under a heading").2.push(row);
    }
    out
}

/// A demo rollout with transformers' trajectory score (mean of its steps).
struct Rollout {
    id: String,
    score: f64,
    success: bool,
}

#[test]
fn select_explain_ranks_every_group_like_the_library_and_ties_go_to_the_earliest() {
    let out = succeed(padv().args(["select", "--device", "cpu", "--explain"]));
    let chosen = jsonl(&String::from_utf8(out.stdout).unwrap());
    let sections = explain_sections(&String::from_utf8(out.stderr).unwrap());
    let (demo, hf, lib) = (demo(), hf_steps(), &*LIBRARY);
    let sel = select(
        lib,
        Method::ProgressAdvantage,
        Aggregation::stored(StepAgg::Mean),
    )
    .unwrap();
    // Independently: each group's rollouts in file order, with transformers' score.
    let mut groups: Vec<(String, Vec<Rollout>)> = Vec::new();
    for r in &demo {
        let (id, task) = (r["id"].as_str().unwrap(), r["task_id"].as_str().unwrap());
        let rollout = Rollout {
            id: id.to_string(),
            score: mean(&hf[id]),
            success: r["success"] == true,
        };
        match groups.iter_mut().find(|g| g.0 == task) {
            Some(g) => g.1.push(rollout),
            None => groups.push((task.to_string(), vec![rollout])),
        }
    }
    assert_eq!(chosen.len(), groups.len());
    assert_eq!(sections.len(), groups.len());
    assert_eq!(sel.groups.len(), groups.len());
    let mut n_tied = 0;
    for (((record, (task, members)), (group, tied, rows)), pick) in
        chosen.iter().zip(&groups).zip(&sections).zip(&sel.groups)
    {
        // The earliest rollout with the highest score (exact ties: identical rollouts).
        let top = members
            .iter()
            .map(|m| m.score)
            .fold(f64::NEG_INFINITY, f64::max);
        let best = members.iter().find(|m| m.score == top).unwrap();
        let want_tied = members.iter().filter(|m| m.score == top).count() > 1;
        n_tied += usize::from(want_tied);
        let b = &record["best_of_n"];
        assert_eq!(record["id"], best.id.as_str(), "{task}");
        assert_eq!(record["task_id"], task.as_str());
        assert_eq!(b["group"], task.as_str());
        assert_eq!(b["tied"], want_tied, "{task}");
        assert_eq!(b["n_candidates"], members.len());
        assert_close(task, b["score"].as_f64().unwrap(), top, HF_TOL);
        assert_close(
            task,
            b["score"].as_f64().unwrap(),
            pick.ranking[0].score.unwrap(),
            LIB_TOL,
        );

        assert_eq!((group, *tied), (task, want_tied));
        assert_eq!(rows.len(), members.len(), "{task}");
        let lib_order: Vec<&str> = pick.ranking.iter().map(|r| r.id.as_str()).collect();
        let cli_order: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(cli_order, lib_order, "{task}: rank order");
        for (k, (rank, id, score, success, mark)) in rows.iter().enumerate() {
            let m = members.iter().find(|m| &m.id == id).unwrap();
            assert_eq!(*rank, k + 1);
            // Four decimals printed.
            assert_close(&format!("{task} {id}"), *score, m.score, 5e-5 + HF_TOL);
            assert_eq!(success, if m.success { "✓" } else { "✗" }, "{task} {id}");
            assert_eq!(*mark, k == 0, "{task} {id}");
        }
    }
    assert!(n_tied > 0, "the demo has groups whose top rollouts tie");
}
