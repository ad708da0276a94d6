//! The prefix cache changes cost, never scores: every fixture pair scores
//! growing prefixes, forks, batches under tiny budgets and block boundaries
//! inside actions bit for bit the same with the cache on and off, and a
//! seeded property loop does the same for random trajectories, masks, block
//! sizes and budgets.

mod kv_common;

use kv_common::{action_request, check_growing_prefixes, check_within, fork_request, pairs};
use padv::backend::cpu::CpuPair;
use padv::backend::{PairScorer, SeqRequest};
use padv::kv::CacheStats;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Cache on vs off: bit for bit. Every row's arithmetic (GEMM rows, the
/// attention tile's key tiles anchored at position 0) is independent of the
/// call it is in.
const TOL: f32 = 0.0;

const PAIRS: [&str; 8] = [
    "llama",
    "olmo3",
    "gemma4",
    "llama3scaled",
    "llama_bf16",
    "mistral",
    "qwen2",
    "qwen3",
];

/// Score `batch` with both and compare bit for bit; returns the cached pair's stats delta.
fn check(what: &str, off: &mut CpuPair, on: &mut CpuPair, batch: &[SeqRequest]) -> CacheStats {
    check_within(what, off, on, batch, TOL)
}

/// A trajectory: a prompt, then (observation, action) steps; returns the
/// tokens and the action spans.
fn trajectory(
    rng: &mut SmallRng,
    vocab: u32,
    prompt: usize,
    steps: usize,
) -> (Vec<u32>, Vec<(usize, usize)>) {
    kv_common::trajectory(rng, vocab, prompt, steps, 1..12, 1..9)
}

#[test]
fn growing_prefixes_score_the_same_with_and_without_the_cache_on_every_pair() {
    for (k, name) in PAIRS.iter().enumerate() {
        let (mut off, mut on) = pairs(name, 8, 1000);
        let mut rng = SmallRng::seed_from_u64(k as u64);
        let (tokens, spans) = trajectory(&mut rng, 500, 40, 6);
        check_growing_prefixes(name, &mut off, &mut on, &tokens, &spans, 8, TOL);
    }
}

#[test]
fn identical_records_scored_together_are_bit_identical_to_uncached_scores() {
    // Three copies in one call: the first wave computes one, the others hit
    // its blocks and compute only the tail after the last full block.
    for (k, name) in PAIRS.iter().enumerate() {
        let (mut off, mut on) = pairs(name, 16, 1000);
        let mut rng = SmallRng::seed_from_u64(100 + k as u64);
        let (tokens, spans) = trajectory(&mut rng, 500, 90, 3);
        let req = action_request(&tokens, &spans);
        let batch = vec![req.clone(), req.clone(), req];
        let d = check(&format!("{name} x3"), &mut off, &mut on, &batch);
        assert!(d.hit_tokens > 0, "{name}: the copies must hit the cache");
    }
}

#[test]
fn forked_continuations_of_a_shared_prompt_are_computed_once_and_score_the_same() {
    for (k, name) in PAIRS.iter().enumerate() {
        let (mut off, mut on) = pairs(name, 4, 1000);
        let mut rng = SmallRng::seed_from_u64(100 + k as u64);
        let (prompt, _) = trajectory(&mut rng, 500, 50, 2);
        let forks: Vec<SeqRequest> = (0..5)
            .map(|_| {
                let (tail, spans) = trajectory(&mut rng, 500, 0, 2);
                fork_request(&prompt, &tail, &spans)
            })
            .collect();
        // One batch: the prompt's full blocks are computed by the first fork
        // and hit by the four others.
        let d = check(&format!("{name} forks"), &mut off, &mut on, &forks);
        assert_eq!(d.hit_tokens as usize, 4 * (prompt.len() / 4 * 4), "{name}");
        // Again one by one: everything but the partial last blocks hits.
        for (i, f) in forks.iter().enumerate() {
            let d = check(
                &format!("{name} fork {i}"),
                &mut off,
                &mut on,
                std::slice::from_ref(f),
            );
            assert!(d.computed_tokens < 4, "{name} fork {i}: {d:?}");
        }
    }
}

#[test]
fn a_tiny_budget_evicts_blocks_and_still_scores_the_same() {
    for (k, name) in PAIRS.iter().enumerate() {
        let (mut off, mut on) = pairs(name, 4, 6);
        let mut rng = SmallRng::seed_from_u64(200 + k as u64);
        let trajs: Vec<_> = (0..3).map(|_| trajectory(&mut rng, 500, 10, 4)).collect();
        for round in 0..2 {
            for (i, (t, s)) in trajs.iter().enumerate() {
                let req = action_request(t, s);
                check(
                    &format!("{name} round {round} traj {i}"),
                    &mut off,
                    &mut on,
                    &[req],
                );
            }
        }
        let batch: Vec<SeqRequest> = trajs.iter().map(|(t, s)| action_request(t, s)).collect();
        check(&format!("{name} batch"), &mut off, &mut on, &batch);
        let stats = on.cache_stats().unwrap();
        assert!(stats.evictions > 0, "{name}: {stats:?}");
        assert!(stats.blocks_cached <= 6);
    }
}

#[test]
fn a_block_boundary_inside_a_multi_token_action_gets_every_log_prob() {
    for (k, name) in PAIRS.iter().enumerate() {
        let (mut off, mut on) = pairs(name, 4, 1000);
        let mut rng = SmallRng::seed_from_u64(300 + k as u64);
        let tokens: Vec<u32> = (0..30).map(|_| rng.random_range(0..500)).collect();
        // Action [6, 14): blocks end at 8 and 12 inside it.
        let spans = [(6, 14)];
        // Cached with the action's first part scored: the first new token (8)
        // is scored from block 1's last hidden state.
        let first = action_request(&tokens[..10], &spans);
        check(&format!("{name} first"), &mut off, &mut on, &[first]);
        let d = check(
            &format!("{name} second"),
            &mut off,
            &mut on,
            &[action_request(&tokens[..20], &spans)],
        );
        assert_eq!(d.hit_tokens, 8, "{name}");
        // Cached without scores (text mask elsewhere): the hit stops at the
        // block holding the first unscored action token, no hole.
        let (mut off, mut on) = pairs(name, 4, 1000);
        let elsewhere = action_request(&tokens[..20], &[(1, 2)]);
        check(&format!("{name} unscored"), &mut off, &mut on, &[elsewhere]);
        let d = check(
            &format!("{name} rescored"),
            &mut off,
            &mut on,
            &[action_request(&tokens[..20], &spans)],
        );
        assert_eq!(d.hit_tokens, 4, "{name}");
        // Position 16 opens a block and was never scored: the hit stops
        // there and it is scored from block 3's last hidden state.
        let d = check(
            &format!("{name} boundary"),
            &mut off,
            &mut on,
            &[action_request(&tokens[..20], &[(16, 17)])],
        );
        assert_eq!(d.hit_tokens, 16, "{name}");
    }
}

#[test]
fn random_trajectories_masks_block_sizes_and_budgets_score_the_same() {
    let mut rng = SmallRng::seed_from_u64(2024);
    for case in 0..24 {
        let name = PAIRS[case % PAIRS.len()];
        let block_size = [1, 2, 3, 4, 8, 16][rng.random_range(0..6)];
        let blocks = [0, 1, 3, 8, 40, 4000][rng.random_range(0..6)];
        let (mut off, mut on) = pairs(name, block_size, blocks);
        // A small tree of trajectories: forks of forks, then step prefixes.
        let mut pool: Vec<Vec<u32>> = vec![Vec::new()];
        for _ in 0..5 {
            let base = pool[rng.random_range(0..pool.len())].clone();
            let cut = rng.random_range(0..=base.len());
            let prompt = rng.random_range(0..20);
            let (tail, _) = trajectory(&mut rng, 500, prompt, 2);
            let mut t = base[..cut].to_vec();
            t.extend(tail);
            pool.push(t);
        }
        for call in 0..4 {
            let n = rng.random_range(1..5);
            let batch: Vec<SeqRequest> = (0..n)
                .map(|_| {
                    let t = &pool[rng.random_range(1..pool.len())];
                    let len = rng.random_range(1..=t.len());
                    let mask = match rng.random_range(0..3) {
                        0 => None,
                        _ => Some((0..len).map(|_| rng.random_bool(0.4)).collect()),
                    };
                    SeqRequest {
                        token_ids: t[..len].to_vec(),
                        score_mask: mask,
                    }
                })
                .collect();
            check(
                &format!("case {case} ({name}, block {block_size}, {blocks} blocks) call {call}"),
                &mut off,
                &mut on,
                &batch,
            );
        }
    }
}
