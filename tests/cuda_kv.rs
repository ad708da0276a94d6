//! The prefix cache on the GPU changes cost, not scores (every pair the
//! CUDA backend runs, Olmo 3's sliding windows and per-layer RoPE and
//! Qwen 3.5's recurrent states, in 64-token blocks, with the delta rule
//! token by token and in chunks, included): growing prefixes
//! scored step by step, forks of one prompt in one batch, a budget so small
//! that blocks are evicted mid-batch, and repeated requests answered from
//! cached scores, each with the device cache on against the same pair with
//! it off. Attention reads each row's keys in the same tiles whatever is
//! cached, so the only differences come from cuBLAS picking other kernels
//! for other row counts: the tolerances are the GPU parity tests' (f32
//! 1e-4; a bf16 pair in bf16, whose activations are rounded to bf16 between
//! GEMMs, 0.15) and the measured differences are printed.
//!
//! Without a usable CUDA device every test prints why and returns;
//! `PADV_REQUIRE_GPU=1` makes that a failure.
#![cfg(feature = "cuda")]

mod cuda_common;
mod kv_common;

use cuda_common::gpu;
use kv_common::{WithCache, action_request, check_growing_prefixes, check_within, fork_request};
use padv::backend::cuda::kv::DeviceKv;
use padv::backend::cuda::{CudaPair, DeltaRulePath};
use padv::backend::{PairScorer, SeqRequest};
use padv::kv::cache::block_size_for;
use padv::kv::{BlockPool, KvOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

impl WithCache for CudaPair {
    fn pool(&self) -> &BlockPool {
        self.cache().expect("a device cache").pool()
    }
}

/// The pairs the CUDA backend runs, with the tolerance of their arithmetic.
const PAIRS: [(&str, f32); 9] = [
    ("llama", 1e-4),
    ("qwen2", 1e-4),
    ("qwen3", 1e-4),
    ("mistral", 1e-4),
    ("olmo3", 1e-4),
    ("qwen3_5", 1e-4),
    ("qwen3_5_chunked", 1e-4),
    ("gemma4", 1e-4),
    ("llama_bf16", 0.15),
];
/// The block size asked for (a hybrid pair's cache rounds it up to 64).
const BLOCK: usize = 16;

/// (cache off, cache on with a budget of `blocks` blocks, its block size)
/// on device 0; a name ending in `_chunked` is its fixture pair with the
/// delta rule in chunks.
fn pairs(name: &str, blocks: usize) -> (CudaPair, CudaPair, usize) {
    let (fixture, rule) = match name.strip_suffix("_chunked") {
        Some(f) => (f, DeltaRulePath::Chunked),
        None => (name, DeltaRulePath::Auto),
    };
    let (p, r) = kv_common::load(fixture);
    let bs = block_size_for(&p.config, &r.config, BLOCK);
    let mut off = CudaPair::new(0, p.clone(), r.clone()).unwrap();
    let mut on = CudaPair::new(0, p, r).unwrap();
    off.set_delta_rule(rule);
    on.set_delta_rule(rule);
    let (dp, dr) = on.models();
    let per_block = DeviceKv::bytes_per_block(dp, bs) + DeviceKv::bytes_per_block(dr, bs) + bs * 16;
    on.set_prefix_cache(Some(KvOptions {
        budget_bytes: blocks * per_block,
        block_size: BLOCK,
    }))
    .unwrap();
    let stats = on.cache_stats().unwrap();
    assert_eq!(stats.blocks_capacity, blocks, "{name}");
    assert_eq!(on.cache().unwrap().block_size(), bs, "{name}");
    (off, on, bs)
}

#[test]
fn growing_prefixes_score_the_same_with_the_device_cache_on_and_off() {
    let Some(_gpu) = gpu() else { return };
    for (k, (name, tol)) in PAIRS.iter().enumerate() {
        let (mut off, mut on, bs) = pairs(name, 1000);
        let mut rng = SmallRng::seed_from_u64(k as u64);
        // A longer prompt for 64-token blocks, so the cache still saves
        // more than half the tokens.
        let prompt = if bs > BLOCK { 200 } else { 70 };
        let (tokens, spans) = kv_common::trajectory(&mut rng, 500, prompt, 6, 5..40, 1..12);
        check_growing_prefixes(name, &mut off, &mut on, &tokens, &spans, bs, *tol);
        eprintln!(
            "{name}: growing prefixes ok ({:?})",
            on.cache_stats().unwrap()
        );
    }
}

#[test]
fn forks_of_one_prompt_share_its_blocks_and_score_as_without_the_cache() {
    let Some(_gpu) = gpu() else { return };
    for (k, (name, tol)) in PAIRS.iter().enumerate() {
        let (mut off, mut on, bs) = pairs(name, 1000);
        let mut rng = SmallRng::seed_from_u64(100 + k as u64);
        let prompt: Vec<u32> = (0..150).map(|_| rng.random_range(0..500)).collect();
        let batch: Vec<SeqRequest> = (0..8)
            .map(|_| {
                let tail: Vec<u32> = (0..rng.random_range(5..60))
                    .map(|_| rng.random_range(0..500))
                    .collect();
                let span = (0, tail.len());
                fork_request(&prompt, &tail, &[span])
            })
            .collect();
        let d = check_within(&format!("{name} forks"), &mut off, &mut on, &batch, *tol);
        // The prompt's full blocks (9 of 16 tokens, 2 of 64) are computed
        // once and hit 7 times.
        assert!(
            d.hit_tokens as usize >= 7 * (150 / bs) * bs,
            "{name}: {d:?}"
        );
    }
}

#[test]
fn a_budget_of_a_few_blocks_evicts_and_still_scores_as_without_the_cache() {
    let Some(_gpu) = gpu() else { return };
    for (k, (name, tol)) in PAIRS.iter().enumerate() {
        // 6 blocks of 16 tokens, 2 of 64: fewer than the rounds fill.
        let hybrid = name.starts_with("qwen3_5");
        let (mut off, mut on, bs) = pairs(name, if hybrid { 2 } else { 6 });
        let mut rng = SmallRng::seed_from_u64(200 + k as u64);
        let mut evicted = 0;
        for round in 0..4 {
            let (tokens, spans) = kv_common::trajectory(&mut rng, 500, 40, 4, 5..30, 1..10);
            let req = action_request(&tokens, &spans);
            let d = check_within(
                &format!("{name} round {round}"),
                &mut off,
                &mut on,
                &[req],
                *tol,
            );
            evicted += d.evictions;
        }
        assert!(evicted > 0, "{name}: nothing evicted with blocks of {bs}");
    }
}

#[test]
fn a_repeated_request_is_answered_from_cached_blocks_and_scores() {
    let Some(_gpu) = gpu() else { return };
    let (mut off, mut on, _) = pairs("llama", 1000);
    let mut rng = SmallRng::seed_from_u64(7);
    let tokens: Vec<u32> = (0..100).map(|_| rng.random_range(0..500)).collect();
    let req = SeqRequest {
        token_ids: tokens,
        score_mask: None,
    };
    let first = check_within("first", &mut off, &mut on, std::slice::from_ref(&req), 1e-4);
    assert_eq!(first.computed_tokens, 100);
    let again = on.score(std::slice::from_ref(&req)).unwrap();
    let second = on.score(std::slice::from_ref(&req)).unwrap();
    // Only the partial last block (100 % 16 = 4 tokens) is recomputed, and
    // the answer does not depend on how much was cached.
    let d = check_within("again", &mut off, &mut on, std::slice::from_ref(&req), 1e-4);
    assert_eq!(d.computed_tokens, 4, "{d:?}");
    assert_eq!(d.hit_tokens, 96, "{d:?}");
    for (a, b) in again.iter().zip(&second) {
        kv_common::assert_same("repeat", a, b, 0.0);
    }
}
