//! The prefix cache of a hybrid model (Qwen 3.5: gated-DeltaNet layers with
//! a recurrent state beside gated attention) changes cost, never scores:
//! growing prefixes, forks of a shared prompt, block boundaries inside an
//! action and eviction under a tiny budget score *bitwise* the same with the
//! cache on and off, and a hit computes only the tokens after it, its
//! DeltaNet layers starting from the cached block's state snapshot.

mod kv_common;

use kv_common::{action_request, check_growing_prefixes, check_within, fork_request, load};
use padv::backend::cpu::CpuPair;
use padv::backend::{PairScorer, SeqRequest};
use padv::kv::{CacheStats, ModelKv, PairCache};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Blocks of a hybrid pair are whole delta-rule chunks.
const BLOCK: usize = 64;

/// (cache off, cache on asking for 16-token blocks with room for `blocks`).
fn pairs(blocks: usize) -> (CpuPair, CpuPair) {
    kv_common::pairs("qwen3_5", 16, blocks)
}

/// Score `batch` with both; every score bit for bit the same.
fn check(what: &str, off: &mut CpuPair, on: &mut CpuPair, batch: &[SeqRequest]) -> CacheStats {
    check_within(what, off, on, batch, 0.0)
}

/// A prompt, then steps with longer observations and actions than the
/// attention tests', so that trajectories cross several 64-token blocks.
fn trajectory(rng: &mut SmallRng, prompt: usize, steps: usize) -> (Vec<u32>, Vec<(usize, usize)>) {
    kv_common::trajectory(rng, 500, prompt, steps, 5..40, 1..20)
}

#[test]
fn a_hybrid_pair_caches_whole_chunks_and_counts_the_recurrent_snapshots_in_the_budget() {
    let (p, r) = load("qwen3_5");
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
    check_growing_prefixes("qwen3_5", &mut off, &mut on, &tokens, &spans, BLOCK, 0.0);
}

#[test]
fn forks_of_a_shared_prompt_of_a_hybrid_pair_compute_it_once_and_score_the_same() {
    let (mut off, mut on) = pairs(1000);
    let mut rng = SmallRng::seed_from_u64(2);
    let (prompt, _) = trajectory(&mut rng, 150, 1);
    let forks: Vec<SeqRequest> = (0..4)
        .map(|_| {
            let (tail, spans) = trajectory(&mut rng, 0, 3);
            fork_request(&prompt, &tail, &spans)
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
