//! The prefix cache of a hybrid model (Qwen 3.5: gated-DeltaNet layers with
//! a recurrent state beside gated attention) changes cost, never scores:
//! growing prefixes, forks of a shared prompt, block boundaries inside an
//! action and eviction under a tiny budget score *bitwise* the same with the
//! cache on and off, and a hit computes only the tokens after it, its
//! DeltaNet layers starting from the cached block's state snapshot.

use std::path::Path;
use std::sync::Arc;

use padv::backend::cpu::CpuPair;
use padv::backend::{PairScorer, SeqRequest};
use padv::kv::{CacheStats, KvOptions, ModelKv, PairCache};
use padv::model::Model;
use padv::score::TokenScores;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Blocks of a hybrid pair are whole delta-rule chunks.
const BLOCK: usize = 64;

fn load() -> (Arc<Model>, Arc<Model>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen3_5");
    (
        Arc::new(Model::load(&dir.join("trained")).unwrap()),
        Arc::new(Model::load(&dir.join("ref")).unwrap()),
    )
}

/// (cache off, cache on asking for 16-token blocks with room for `blocks`).
fn pairs(blocks: usize) -> (CpuPair, CpuPair) {
    let (p, r) = load();
    let budget = blocks * PairCache::bytes_per_block(&p, &r, 16);
    let off = CpuPair::new(p.clone(), r.clone());
    let on = CpuPair::new(p, r).with_prefix_cache(Some(KvOptions {
        budget_bytes: budget,
        block_size: 16,
    }));
    (off, on)
}

fn assert_bitwise(what: &str, off: &TokenScores, on: &TokenScores) {
    assert_eq!(off.len(), on.len(), "{what}: length");
    for (field, a, b) in [
        ("logp_policy", &off.logp_policy, &on.logp_policy),
        ("logp_reference", &off.logp_reference, &on.logp_reference),
        ("entropy_policy", &off.entropy_policy, &on.entropy_policy),
        ("self_certainty", &off.self_certainty, &on.self_certainty),
    ] {
        for (t, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{what} {field}[{t}]: off {x}, on {y}"
            );
        }
    }
}

/// Score `batch` with both and compare; returns the cached pair's stats delta.
fn check(what: &str, off: &mut CpuPair, on: &mut CpuPair, batch: &[SeqRequest]) -> CacheStats {
    let before = on.cache_stats().unwrap();
    let a = off.score(batch).unwrap();
    let b = on.score(batch).unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_bitwise(&format!("{what} #{i}"), x, y);
    }
    let pool = on.cache().unwrap().pool();
    pool.check_invariants().unwrap();
    assert_eq!(pool.referenced(), 0, "{what}: blocks left referenced");
    on.cache_stats().unwrap().since(&before)
}

/// A prompt, then (observation, action) steps: tokens and action spans.
fn trajectory(rng: &mut SmallRng, prompt: usize, steps: usize) -> (Vec<u32>, Vec<(usize, usize)>) {
    let mut tokens: Vec<u32> = (0..prompt).map(|_| rng.random_range(0..500)).collect();
    let mut spans = Vec::new();
    for _ in 0..steps {
        let obs = rng.random_range(5..40);
        tokens.extend((0..obs).map(|_| rng.random_range(0..500)));
        let act = rng.random_range(1..20);
        spans.push((tokens.len(), tokens.len() + act));
        tokens.extend((0..act).map(|_| rng.random_range(0..500)));
    }
    (tokens, spans)
}

fn action_request(tokens: &[u32], spans: &[(usize, usize)]) -> SeqRequest {
    let mut mask = vec![false; tokens.len()];
    for &(a, b) in spans {
        for m in &mut mask[a.min(tokens.len())..b.min(tokens.len())] {
            *m = true;
        }
    }
    SeqRequest {
        token_ids: tokens.to_vec(),
        score_mask: Some(mask),
    }
}

#[test]
fn a_hybrid_pair_caches_whole_chunks_and_counts_the_recurrent_snapshots_in_the_budget() {
    let (p, r) = load();
    assert_eq!(PairCache::block_size_for(&p, &r, 16), BLOCK);
    assert_eq!(PairCache::block_size_for(&p, &r, 65), 2 * BLOCK);
    // Per model: K/V of the one attention layer (64 tokens × 2 kv heads ×
    // 16, twice), three DeltaNet snapshots (4 × 16 × 16 state + 3 × 128
    // conv tail) and a hidden state of 64.
    let per_model = (2 * 64 * 32 + 3 * (4 * 16 * 16 + 3 * 128) + 64) * 4;
    assert_eq!(ModelKv::bytes_per_block(&p.config, BLOCK), per_model);
    assert_eq!(
        PairCache::bytes_per_block(&p, &r, 16),
        2 * per_model + BLOCK * 16
    );
    let (_, on) = pairs(5);
    let stats = on.cache_stats().unwrap();
    assert_eq!((stats.block_size, stats.blocks_capacity), (BLOCK, 5));
}

#[test]
fn growing_prefixes_of_a_hybrid_pair_score_bitwise_the_same_with_and_without_the_cache() {
    let (mut off, mut on) = pairs(1000);
    let mut rng = SmallRng::seed_from_u64(1);
    let (tokens, spans) = trajectory(&mut rng, 70, 12);
    assert!(tokens.len() > 4 * BLOCK, "{} tokens", tokens.len());
    let mut computed = 0;
    for step in 1..=spans.len() {
        let end = spans[step - 1].1;
        let req = action_request(&tokens[..end], &spans[..step]);
        let d = check(&format!("step {step}"), &mut off, &mut on, &[req]);
        computed += d.computed_tokens;
        if step > 1 {
            let prev_end = spans[step - 2].1;
            assert_eq!(
                d.hit_tokens as usize,
                prev_end / BLOCK * BLOCK,
                "step {step}"
            );
        }
    }
    let all = off.cache_stats().unwrap().computed_tokens;
    assert!(computed * 2 < all, "{computed} computed vs {all} uncached");
    let full = SeqRequest {
        token_ids: tokens.clone(),
        score_mask: None,
    };
    check("full", &mut off, &mut on, &[full]);
}

#[test]
fn forks_of_a_shared_prompt_of_a_hybrid_pair_compute_it_once_and_score_the_same() {
    let (mut off, mut on) = pairs(1000);
    let mut rng = SmallRng::seed_from_u64(2);
    let (prompt, _) = trajectory(&mut rng, 150, 1);
    let forks: Vec<SeqRequest> = (0..4)
        .map(|_| {
            let (tail, spans) = trajectory(&mut rng, 0, 3);
            let mut t = prompt.clone();
            t.extend(&tail);
            let spans: Vec<_> = spans
                .iter()
                .map(|(a, b)| (a + prompt.len(), b + prompt.len()))
                .collect();
            action_request(&t, &spans)
        })
        .collect();
    let d = check("forks", &mut off, &mut on, &forks);
    assert_eq!(d.hit_tokens as usize, 3 * (prompt.len() / BLOCK * BLOCK));
    for (i, f) in forks.iter().enumerate() {
        let d = check(
            &format!("fork {i}"),
            &mut off,
            &mut on,
            std::slice::from_ref(f),
        );
        assert!(d.computed_tokens < BLOCK as u64, "fork {i}: {d:?}");
    }
}

#[test]
fn a_block_boundary_inside_an_action_and_inside_a_chunk_gets_every_log_prob() {
    let (mut off, mut on) = pairs(1000);
    let mut rng = SmallRng::seed_from_u64(3);
    let tokens: Vec<u32> = (0..300).map(|_| rng.random_range(0..500)).collect();
    // The action [60, 140) holds the block boundaries at 64 and 128.
    let spans = [(60, 140)];
    // Ends inside the action and inside the second chunk: block 0 is cached
    // with the scores of 60..63.
    let first = action_request(&tokens[..100], &spans);
    check("first", &mut off, &mut on, &[first]);
    // Hits block 0: position 64 is scored from block 0's last hidden state,
    // the DeltaNet layers continue from its snapshot and fill blocks 1, 2.
    let d = check(
        "second",
        &mut off,
        &mut on,
        &[action_request(&tokens[..200], &spans)],
    );
    assert_eq!(d.hit_tokens, BLOCK as u64);
    // Every wanted position of blocks 0..2 is cached: all three hit.
    let d = check(
        "third",
        &mut off,
        &mut on,
        &[action_request(&tokens[..300], &spans)],
    );
    assert_eq!(d.hit_tokens, 3 * BLOCK as u64);
}

#[test]
fn a_tiny_budget_evicts_hybrid_blocks_with_their_snapshots_and_still_scores_the_same() {
    let (mut off, mut on) = pairs(3);
    let mut rng = SmallRng::seed_from_u64(4);
    let trajs: Vec<_> = (0..3).map(|_| trajectory(&mut rng, 40, 8)).collect();
    for round in 0..2 {
        for (i, (t, s)) in trajs.iter().enumerate() {
            check(
                &format!("round {round} traj {i}"),
                &mut off,
                &mut on,
                &[action_request(t, s)],
            );
        }
    }
    let batch: Vec<SeqRequest> = trajs.iter().map(|(t, s)| action_request(t, s)).collect();
    check("batch", &mut off, &mut on, &batch);
    let stats = on.cache_stats().unwrap();
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(stats.blocks_cached <= 3);
    assert!(stats.bytes_allocated <= stats.budget_bytes, "{stats:?}");
}
