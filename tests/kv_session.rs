//! The streaming session API benefits from the prefix cache: appending a step
//! computes about the step's tokens only, forked candidates share their state,
//! and every score equals the uncached one bit for bit.

use std::path::Path;

use padv::backend::Device;
use padv::pipeline::{Scorer, ScorerOptions};
use padv::score::aggregate::TokenAgg;
use padv::session::Session;
use padv::trajectory::read_records;
use serde_json::{Value, json};

fn scorer(prefix_cache: bool) -> Scorer {
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models");
    let opts = ScorerOptions {
        device: Device::Cpu,
        token_agg: TokenAgg::Sum,
        prefix_cache,
        ..ScorerOptions::default()
    };
    Scorer::load(&toy.join("trained"), &toy.join("ref"), opts).unwrap()
}

fn demo_messages() -> Vec<Value> {
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld");
    let record = read_records(&toy.join("demo_trained.jsonl"), None)
        .unwrap()
        .remove(0)
        .unwrap();
    record
        .messages()
        .unwrap()
        .iter()
        .map(|m| Value::Object(m.raw.clone()))
        .collect()
}

#[test]
fn session_steps_cost_their_new_tokens_and_score_as_without_the_cache() {
    let messages = demo_messages();
    let (mut on, mut off) = (scorer(true), scorer(false));
    assert!(on.cache_stats().unwrap().blocks_capacity > 0);
    assert_eq!(off.cache_stats().unwrap().blocks_capacity, 0);
    let mut s_on = Session::new(messages[..1].to_vec());
    let mut s_off = s_on.fork();
    let mut total_len = 0u64;
    for pair in messages[1..].chunks(2) {
        let a = on.append(&mut s_on, pair.to_vec()).unwrap();
        let b = off.append(&mut s_off, pair.to_vec()).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                x.advantage.unwrap().to_bits(),
                y.advantage.unwrap().to_bits()
            );
            assert_eq!(
                x.logp_policy.unwrap().to_bits(),
                y.logp_policy.unwrap().to_bits()
            );
        }
        total_len = off.cache_stats().unwrap().computed_tokens;
    }
    let steps = (messages.len() - 1).div_ceil(2) as u64;
    let on_stats = on.cache_stats().unwrap();
    let full = on
        .encode(&padv::trajectory::record_from_json(json!({"messages": messages}), "all").unwrap())
        .unwrap()
        .token_ids
        .len() as u64;
    // Every token once, plus at most a partial block per call.
    assert!(
        on_stats.computed_tokens <= full + steps * on_stats.block_size as u64,
        "{on_stats:?} for {full} tokens in {steps} steps"
    );
    assert!(
        on_stats.computed_tokens * 2 < total_len,
        "{on_stats:?} vs {total_len}"
    );
    assert!(on_stats.hit_rate() > 0.5, "{on_stats:?}");
}

#[test]
fn forked_candidates_hit_the_shared_state_and_score_as_without_the_cache() {
    let messages = demo_messages();
    let (mut on, mut off) = (scorer(true), scorer(false));
    let session = Session::new(messages[..3].to_vec());
    let candidates = vec![
        messages[4].clone(),
        json!({"role": "assistant", "content": "wait"}),
        json!({"role": "assistant", "content": "go south"}),
    ];
    let n = candidates.len();
    let a = on
        .candidates(&session, Some(messages[3].clone()), candidates.clone())
        .unwrap();
    let b = off
        .candidates(&session, Some(messages[3].clone()), candidates)
        .unwrap();
    assert_eq!((a.len(), b.len()), (n, n), "one step per candidate");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x.advantage.unwrap().to_bits(),
            y.advantage.unwrap().to_bits()
        );
    }
    let stats = on.cache_stats().unwrap();
    assert_eq!(stats.lookups, 3);
    assert!(stats.hit_tokens > 0, "{stats:?}");
}
