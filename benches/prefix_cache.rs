//! The KV-prefix cache on the workload it is for: a 10-step agent trajectory
//! scored step by step (each call carries the whole conversation so far), on
//! a small random-weight Llama-shaped pair, cache off vs on (a fresh cache per
//! iteration). Throughput = requested tokens. For real-shape figures run
//! `padv bench --prefix-cache --shape smollm2-135m`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use padv::backend::cpu::CpuPair;
use padv::backend::{PairScorer, SeqRequest};
use padv::bench::synth::{self, Shape};
use padv::kv::KvOptions;
use padv::model::{DType, Model};

const MINI: Shape = Shape {
    name: "mini-llama",
    arch: "LlamaForCausalLM",
    hidden: 256,
    intermediate: 768,
    layers: 4,
    heads: 4,
    kv_heads: 2,
    head_dim: 64,
    vocab: 8192,
    tied: true,
    rope_theta: 1e4,
    extra: None,
};

/// One call per step: the conversation through that step, actions scored.
fn step_calls(vocab: u32) -> Vec<Vec<SeqRequest>> {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut tokens: Vec<u32> = (0..128).map(|_| rng.random_range(0..vocab)).collect();
    let mut mask = vec![false; tokens.len()];
    let mut calls = Vec::new();
    for _ in 0..10 {
        tokens.extend((0..32).map(|_| rng.random_range(0..vocab)));
        mask.resize(tokens.len(), false);
        tokens.extend((0..16).map(|_| rng.random_range(0..vocab)));
        mask.resize(tokens.len(), true);
        calls.push(vec![SeqRequest {
            token_ids: tokens.clone(),
            score_mask: Some(mask.clone()),
        }]);
    }
    calls
}

fn prefix_cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (p, r) = (dir.path().join("policy"), dir.path().join("reference"));
    synth::write(&MINI, &p, DType::BF16, 1).expect("synth policy");
    synth::write(&MINI, &r, DType::BF16, 2).expect("synth reference");
    let policy = Arc::new(Model::load(&p).expect("policy"));
    let reference = Arc::new(Model::load(&r).expect("reference"));
    let calls = step_calls(MINI.vocab as u32);
    let tokens: usize = calls.iter().flatten().map(|r| r.token_ids.len()).sum();
    let mut g = c.benchmark_group("ten_steps_step_by_step");
    g.throughput(Throughput::Elements(tokens as u64));
    g.sample_size(10);
    for (name, cache) in [
        ("cache_off", None),
        ("cache_on", Some(KvOptions::default())),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut pair =
                    CpuPair::new(policy.clone(), reference.clone()).with_prefix_cache(cache);
                for call in &calls {
                    black_box(pair.score(call).expect("score"));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, prefix_cache);
criterion_main!(benches);
