//! Error labels that name a step the trajectory does not have are not used
//! silently: a raw record with one is rejected when read (the record's
//! error, counted like any other), and `eval` leaves such labels out of
//! attribution in scored files and counts them.

use std::path::Path;

use padv::apps::{ReadOptions, evaluate, parse_scored};
use padv::trajectory::read_records;
use serde_json::json;

fn read_errors(dir: &Path, name: &str, text: &str) -> Vec<Option<String>> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    read_records(&path, None)
        .unwrap()
        .into_iter()
        .map(|r| r.err().map(|e| e.to_string()))
        .collect()
}

#[test]
fn a_failure_step_past_the_action_steps_is_the_records_error() {
    let dir = tempfile::tempdir().unwrap();
    let messages = json!([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "b"}
    ]);
    let lines = [
        json!({"id": "ok", "messages": messages, "failure_step": 1}),
        json!({"id": "far", "messages": messages, "failure_step": 99}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let errors = read_errors(dir.path(), "in.jsonl", &text.join("\n"));
    assert_eq!(errors[0], None);
    let e = errors[1].as_deref().unwrap();
    assert!(
        e.contains("in.jsonl:2")
            && e.contains("failure_step: 99 is past the record's 2 action steps"),
        "{e}"
    );
}

#[test]
fn a_who_and_when_mistake_step_past_the_history_is_the_records_error() {
    let dir = tempfile::tempdir().unwrap();
    let sample = json!({
        "question": "q", "question_ID": "w1", "mistake_step": "7",
        "history": [
            {"role": "human", "content": "task"},
            {"name": "Orchestrator", "role": "Orchestrator (thought)", "content": "plan"},
            {"name": "WebSurfer", "role": "WebSurfer", "content": "result"}
        ]
    });
    let errors = read_errors(dir.path(), "w1.json", &sample.to_string());
    let e = errors[0].as_deref().unwrap();
    assert!(
        e.contains("mistake_step: 7 is past the record's 3 messages"),
        "{e}"
    );
}

#[test]
fn eval_leaves_out_labels_past_the_trajectory_and_counts_them() {
    let settings = json!({"token_agg": "mean", "step_agg": "mean", "beta": 1.0});
    let steps = json!([
        {"step": 0, "message": 1, "advantage": 0.5},
        {"step": 1, "message": 3, "advantage": -2.0}
    ]);
    let lines = [
        json!({"id": "a", "success": false, "failure_step": 1, "steps": steps, "settings": settings}),
        json!({"id": "b", "success": false, "failure_step": 99, "steps": steps, "settings": settings}),
        json!({"id": "c", "success": true, "mistake_step": 40, "steps": steps, "settings": settings}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let set = parse_scored(
        text.join("\n").as_bytes(),
        "s.jsonl",
        &ReadOptions::default(),
    )
    .unwrap();
    let report = evaluate(&set, None).unwrap();
    assert_eq!(report.labels_out_of_range, 2);
    let j = report.to_json();
    assert_eq!(j["skipped"]["labels_out_of_range"], 2);
    let pa = &j["attribution"]["progress_advantage"]["min_cumulative"];
    assert_eq!(pa["n"], 1);
    assert_eq!(pa["mae"], 0.0);
    assert!(
        report.to_markdown().contains("2 out of range"),
        "{}",
        report.to_markdown()
    );
}
