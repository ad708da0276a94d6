//! Cache-on versus cache-off comparisons shared by the prefix-cache tests:
//! fixture pairs with and without a cache, agent-like trajectories with
//! action masks, and a checked scoring call.
#![allow(dead_code)] // each test file uses a subset

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use padv::backend::cpu::CpuPair;
use padv::backend::{PairScorer, SeqRequest};
use padv::kv::{BlockPool, CacheStats, KvOptions, PairCache};
use padv::model::Model;
use padv::score::TokenScores;
use rand::Rng;
use rand::rngs::SmallRng;

/// The fixture pair `name`: (policy, reference). `CARGO_MANIFEST_DIR` at run
/// time wins, so a test binary built here runs from another checkout
/// (scripts/gpu-check.sh carries them to a GPU machine).
pub fn load(name: &str) -> (Arc<Model>, Arc<Model>) {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    let dir = root.join("tests/fixtures/models").join(name);
    (
        Arc::new(Model::load(&dir.join("trained")).unwrap()),
        Arc::new(Model::load(&dir.join("ref")).unwrap()),
    )
}

/// (cache off, cache on with `block_size` and a budget of `blocks` blocks).
pub fn pairs(name: &str, block_size: usize, blocks: usize) -> (CpuPair, CpuPair) {
    let (p, r) = load(name);
    let budget = blocks * PairCache::bytes_per_block(&p, &r, block_size);
    let off = CpuPair::new(p.clone(), r.clone());
    let on = CpuPair::new(p, r).with_prefix_cache(Some(KvOptions {
        budget_bytes: budget,
        block_size,
    }));
    (off, on)
}

/// Every score of `on` within `tol` of `off` (`tol` 0: bit for bit), NaN
/// (not asked for) at the same places.
pub fn assert_same(what: &str, off: &TokenScores, on: &TokenScores, tol: f32) {
    assert_eq!(off.len(), on.len(), "{what}: length");
    for (field, a, b) in [
        ("logp_policy", &off.logp_policy, &on.logp_policy),
        ("logp_reference", &off.logp_reference, &on.logp_reference),
        ("entropy_policy", &off.entropy_policy, &on.entropy_policy),
        ("self_certainty", &off.self_certainty, &on.self_certainty),
    ] {
        for (t, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.is_nan(), y.is_nan(), "{what} {field}[{t}]: {x} vs {y}");
            let same = x.is_nan()
                || if tol == 0.0 {
                    x.to_bits() == y.to_bits()
                } else {
                    (x - y).abs() <= tol
                };
            assert!(same, "{what} {field}[{t}]: off {x}, on {y}");
        }
    }
}

/// A scorer with a prefix cache whose index the tests can inspect.
pub trait WithCache: PairScorer {
    fn pool(&self) -> &BlockPool;
}

impl WithCache for CpuPair {
    fn pool(&self) -> &BlockPool {
        self.cache().expect("a cache").pool()
    }
}

/// Score `batch` with both pairs and compare within `tol`; returns the
/// cached pair's stats delta.
pub fn check_within(
    what: &str,
    off: &mut dyn PairScorer,
    on: &mut impl WithCache,
    batch: &[SeqRequest],
    tol: f32,
) -> CacheStats {
    let before = on.cache_stats().unwrap();
    let a = off.score(batch).unwrap();
    let b = on.score(batch).unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_same(&format!("{what} #{i}"), x, y, tol);
    }
    let pool = on.pool();
    pool.check_invariants().unwrap();
    assert_eq!(pool.referenced(), 0, "{what}: blocks left referenced");
    on.cache_stats().unwrap().since(&before)
}

/// A trajectory: `prompt` tokens, then `steps` (observation, action) pairs
/// of lengths drawn from `obs` and `act`; returns the tokens and the action
/// spans.
pub fn trajectory(
    rng: &mut SmallRng,
    vocab: u32,
    prompt: usize,
    steps: usize,
    obs: Range<usize>,
    act: Range<usize>,
) -> (Vec<u32>, Vec<(usize, usize)>) {
    let mut tokens: Vec<u32> = (0..prompt).map(|_| rng.random_range(0..vocab)).collect();
    let mut spans = Vec::new();
    for _ in 0..steps {
        let o = rng.random_range(obs.clone());
        tokens.extend((0..o).map(|_| rng.random_range(0..vocab)));
        let a = rng.random_range(act.clone());
        spans.push((tokens.len(), tokens.len() + a));
        tokens.extend((0..a).map(|_| rng.random_range(0..vocab)));
    }
    (tokens, spans)
}

/// A request scoring only the tokens inside `spans`.
pub fn action_request(tokens: &[u32], spans: &[(usize, usize)]) -> SeqRequest {
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

/// Score a trajectory step by step (each request: the tokens up to the end
/// of an action, the actions so far scored), then whole with every position:
/// scores within `tol`, each step hitting every full block of the previous
/// one (`block` tokens), and fewer than half the tokens computed.
#[allow(clippy::too_many_arguments)]
pub fn check_growing_prefixes(
    what: &str,
    off: &mut dyn PairScorer,
    on: &mut impl WithCache,
    tokens: &[u32],
    spans: &[(usize, usize)],
    block: usize,
    tol: f32,
) {
    let mut computed = 0;
    for step in 1..=spans.len() {
        let end = spans[step - 1].1;
        let req = action_request(&tokens[..end], &spans[..step]);
        let d = check_within(&format!("{what} step {step}"), off, on, &[req], tol);
        computed += d.computed_tokens;
        if step > 1 {
            // Only the tokens after the last full cached block.
            let prev_end = spans[step - 2].1;
            assert_eq!(
                d.hit_tokens as usize,
                prev_end / block * block,
                "{what} step {step}"
            );
        }
    }
    let all = off.cache_stats().unwrap().computed_tokens;
    assert!(
        computed * 2 < all,
        "{what}: {computed} computed vs {all} uncached"
    );
    // Every position, too (no mask): cached scores plus recomputed ones.
    let full = SeqRequest {
        token_ids: tokens.to_vec(),
        score_mask: None,
    };
    check_within(&format!("{what} full"), off, on, &[full], tol);
}

/// `prompt` continued by `tail`, scoring the tail's actions (`spans` in
/// tail positions).
pub fn fork_request(prompt: &[u32], tail: &[u32], spans: &[(usize, usize)]) -> SeqRequest {
    let mut t = prompt.to_vec();
    t.extend(tail);
    let n = prompt.len();
    let spans: Vec<_> = spans.iter().map(|(a, b)| (a + n, b + n)).collect();
    action_request(&t, &spans)
}
