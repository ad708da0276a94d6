//! End-to-end check of the evaluation against numbers computed by an
//! independent implementation on the toyworld demo sets: per-step log-prob
//! sums (`expected_steps_demo_*.jsonl`) joined with the labels
//! (`demo_*.jsonl`) must reproduce every metric in
//! `expected_eval_demo_*.json` for progress advantage and the two log-prob
//! baselines.

use std::collections::HashMap;
use std::path::PathBuf;

use padv::apps::attribute::Predictor;
use padv::apps::eval::evaluate;
use padv::apps::method::Method;
use padv::apps::scored::{Labels, ScoreSettings, ScoredSet, ScoredTrajectory, StepScore};
use padv::score::aggregate::{StepAgg, TokenAgg};
use serde_json::Value;

const TOL: f64 = 1e-9;
const CHECKED: [Method; 3] = [
    Method::ProgressAdvantage,
    Method::PolicyLogprob,
    Method::ReferenceLogprob,
];

fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/toyworld")
        .join(name)
}

fn jsonl(name: &str) -> Vec<Value> {
    std::fs::read_to_string(asset(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Join the expected per-step sums with the labelled episodes by `id`.
fn scored_set(which: &str) -> ScoredSet {
    let labels: HashMap<String, Value> = jsonl(&format!("demo_{which}.jsonl"))
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect();
    let settings = ScoreSettings {
        token_agg: TokenAgg::Sum,
        step_agg: StepAgg::Mean,
        beta: 1.0,
        render: Some("template".into()),
    };
    let trajectories = jsonl(&format!("expected_steps_demo_{which}.jsonl"))
        .into_iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            let episode = labels[id].as_object().unwrap();
            let (adv, lp, lr) = (
                floats(&e["steps"]),
                floats(&e["logp_policy"]),
                floats(&e["logp_reference"]),
            );
            let steps = (0..adv.len())
                .map(|k| StepScore {
                    advantage: Some(adv[k]),
                    logp_policy: Some(lp[k]),
                    logp_reference: Some(lr[k]),
                    ..StepScore::default()
                })
                .collect();
            ScoredTrajectory::new(id, steps, settings.clone())
                .with_labels(Labels::from_record(episode, id).unwrap())
                .with_group(episode["task_id"].as_str().unwrap())
        })
        .collect::<Vec<_>>();
    ScoredSet::from(trajectories)
}

fn assert_close(what: &str, got: f64, want: &Value) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: expected value missing"));
    assert!(
        (got - want).abs() <= TOL,
        "{what}: got {got}, expected {want}"
    );
}

fn check(which: &str) {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(asset(&format!("expected_eval_demo_{which}.json"))).unwrap(),
    )
    .unwrap();
    let report = evaluate(&scored_set(which), None).unwrap();
    let got = report.to_json();
    assert_eq!(
        got["settings"]["token_agg"],
        expected["settings"]["token_agg"]
    );
    assert_eq!(
        got["settings"]["step_agg"],
        expected["settings"]["step_agg"]
    );

    let (eb, gb) = (&expected["best_of_n"], &got["best_of_n"]);
    assert_eq!(gb["n_groups"], eb["n_groups"], "{which}: n_groups");
    assert_close(
        &format!("{which} mean_at_n"),
        gb["mean_at_n"].as_f64().unwrap(),
        &eb["mean_at_n"],
    );
    assert_close(
        &format!("{which} pass_at_n"),
        gb["pass_at_n"].as_f64().unwrap(),
        &eb["pass_at_n"],
    );

    for m in CHECKED {
        let name = m.name();
        let (eu, gu) = (&expected["uncertainty"][name], &got["uncertainty"][name]);
        assert_eq!(gu["n"], eu["n"], "{which} {name} uncertainty n");
        for k in ["auroc", "spearman"] {
            assert_close(
                &format!("{which} {name} {k}"),
                gu[k].as_f64().unwrap(),
                &eu[k],
            );
        }
        assert_close(
            &format!("{which} {name} best-of-N"),
            gb[name]["success"].as_f64().unwrap(),
            &eb[name]["success"],
        );
        for p in Predictor::ALL {
            let (ea, ga) = (
                &expected["attribution"][name][p.name()],
                &got["attribution"][name][p.name()],
            );
            assert_eq!(ga["n"], ea["n"], "{which} {name} {p} n");
            for k in ["accuracy", "mae"] {
                assert_close(
                    &format!("{which} {name} {p} {k}"),
                    ga[k].as_f64().unwrap(),
                    &ea[k],
                );
            }
        }
    }
}

#[test]
fn evaluation_reproduces_the_independent_numbers_on_reference_rollouts() {
    check("ref");
}

#[test]
fn evaluation_reproduces_the_independent_numbers_on_trained_rollouts() {
    check("trained");
}

#[test]
fn attribution_counts_only_trajectories_with_a_failure_label() {
    let set = scored_set("ref");
    let labelled = set
        .trajectories
        .iter()
        .filter(|t| t.labels.failure_step.is_some())
        .count();
    let report = evaluate(&set, None).unwrap();
    assert_eq!(labelled, 183);
    assert_eq!(report.label_units[0].1, 183);
}

/// The cells after the label of the metrics-table row labelled `label`, as
/// text.
fn table_row(html: &str, label: &str) -> Vec<String> {
    let start = html
        .find(&format!("<td>{label}</td>"))
        .unwrap_or_else(|| panic!("no row {label}"));
    let row = &html[start..start + html[start..].find("</tr>").unwrap()];
    row.split("</td>")
        .skip(1)
        .filter_map(|cell| Some(cell.rsplit_once('>')?.1.to_string()))
        .collect()
}

#[test]
fn the_report_is_one_self_contained_html_file_with_every_chart() {
    use padv::apps::report::{ReportOptions, render_html};
    let set = scored_set("ref");
    let report = evaluate(&set, None).unwrap();
    let opts = ReportOptions {
        title: "toyworld demo (π_ref rollouts)".into(),
        ..ReportOptions::default()
    };
    let html = render_html(&set, &report, &opts).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for needle in [
        "<table>",
        "ROC curves per method",
        "Best-of-N success rate",
        "Step scores of demo-",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    // The metrics table prints the independent numbers (three decimals).
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(asset("expected_eval_demo_ref.json")).unwrap(),
    )
    .unwrap();
    for m in CHECKED {
        let (u, name) = (&expected["uncertainty"][m.name()], m.name());
        let mut want = vec![
            format!("{:.3}", u["auroc"].as_f64().unwrap()),
            format!("{:.3}", u["spearman"].as_f64().unwrap()),
            u["n"].to_string(),
            format!(
                "{:.3}",
                expected["best_of_n"][name]["success"].as_f64().unwrap()
            ),
        ];
        for p in Predictor::ALL {
            let a = &expected["attribution"][name][p.name()];
            want.push(format!("{:.3}", a["accuracy"].as_f64().unwrap()));
            want.push(format!("{:.3}", a["mae"].as_f64().unwrap()));
        }
        assert_eq!(table_row(&html, m.label()), want, "{name}");
    }
    // Nothing is fetched: no scripts, links or remote URLs.
    for banned in ["<script", "<link", "http://", "https://", "url("] {
        let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
        assert!(!outside_svg_ns.contains(banned), "report contains {banned}");
    }
    // scripts/render-report.sh sets this to look at the page.
    if let Ok(out) = std::env::var("PADV_REPORT_OUT") {
        std::fs::write(out, &html).unwrap();
    }
}
