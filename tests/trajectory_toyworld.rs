//! The toyworld pair's demo trajectories: its word-level tokenizer and
//! `<|role|> content <|end|> ` template give one action per assistant message,
//! as many as the expected per-step sums, each its words plus `<|end|>`.

use std::path::Path;

use padv::tokenizer::TokenizerBundle;
use padv::trajectory::{Format, RenderMode, encode, read_records};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_demo_trajectory_has_one_action_per_expected_step() {
    let tok = TokenizerBundle::load(root().join("assets/toyworld/models/ref")).unwrap();
    let trained = TokenizerBundle::load(root().join("assets/toyworld/models/trained")).unwrap();
    tok.same_as(&trained).unwrap();
    assert_eq!(RenderMode::default_for(&tok), RenderMode::Template);
    let end = tok.token_to_id("<|end|>").unwrap();
    let mut total = 0;
    for set in ["ref", "trained"] {
        let records = read_records(
            &root().join(format!("assets/toyworld/demo_{set}.jsonl")),
            None,
        )
        .unwrap();
        let expected = std::fs::read_to_string(
            root().join(format!("assets/toyworld/expected_steps_demo_{set}.jsonl")),
        )
        .unwrap();
        let expected: Vec<Value> = expected
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), expected.len());
        for (record, want) in records.into_iter().zip(&expected) {
            let record = record.unwrap();
            assert_eq!(record.format, Format::Messages);
            assert_eq!(record.id, want["id"].as_str().unwrap());
            assert!(record.passthrough.contains_key("task_id"));
            assert!(record.success().is_some());
            let enc = encode(&record, &tok, RenderMode::Template, None).unwrap();
            let steps = want["steps"].as_array().unwrap().len();
            assert_eq!(enc.actions.len(), steps, "{}", record.id);
            let messages = record.messages().unwrap();
            for a in &enc.actions {
                assert!(!a.truncated);
                assert_eq!(enc.token_ids[a.end - 1], end, "{}", record.id);
                let words = messages[a.message_index].content.split_whitespace().count();
                assert_eq!(a.len(), words + 1, "{}", record.id);
            }
            total += 1;
        }
    }
    assert_eq!(total, 512);
}

#[test]
fn plain_rendering_of_a_toyworld_episode_puts_each_message_after_bos() {
    let tok = TokenizerBundle::load(root().join("assets/toyworld/models/ref")).unwrap();
    let mut records = read_records(&root().join("assets/toyworld/demo_ref.jsonl"), None).unwrap();
    let record = records.remove(0).unwrap();
    let enc = encode(&record, &tok, RenderMode::Plain, None).unwrap();
    assert_eq!(enc.token_ids[0], tok.bos_id().unwrap());
    let n_assistant = record
        .messages()
        .unwrap()
        .iter()
        .filter(|m| m.role == "assistant")
        .count();
    assert_eq!(enc.actions.len(), n_assistant);
    // The word-level vocabulary has no `[assistant]:`: plain rendering maps
    // it to <|unk|>, but every span is still non-empty and in order.
    let mut last = 0;
    for a in &enc.actions {
        assert!(a.start >= last && a.end > a.start);
        last = a.end;
    }
}
