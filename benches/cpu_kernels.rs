//! CPU kernels side by side: the GEMM with bf16 vs f32 weights (GFLOP/s in
//! criterion's throughput column = elements = FLOPs), the fused row scorer vs
//! a naive log-softmax + gather over the same logits, blocked attention.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use padv::backend::cpu::gemm::matmul_wt;
use padv::backend::cpu::ops::{AttnShape, attention, attention_bf16};
use padv::model::weights::{Data, Tensor};
use padv::score::fused::{naive_row_stats, row_stats};

fn noise(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

fn gemm(c: &mut Criterion) {
    // Qwen2.5-0.5B's MLP up-projection over a 256-token chunk.
    let (t, n, k) = (256, 4864, 896);
    let x = noise(t * k, 1);
    let wf = noise(n * k, 2);
    let wb: Vec<half::bf16> = wf.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let shape = [n, k];
    let mut out = vec![0.0f32; t * n];
    let mut g = c.benchmark_group("gemm_256x4864x896");
    g.throughput(Throughput::Elements((2 * t * n * k) as u64));
    g.sample_size(20);
    for (name, data) in [
        ("f32_weights", Data::F32(&wf)),
        ("bf16_weights", Data::BF16(&wb)),
    ] {
        let w = Tensor {
            name: "w",
            shape: &shape,
            data,
        };
        g.bench_function(name, |b| {
            b.iter(|| matmul_wt(black_box(&x), t, &w, &mut out, n, false))
        });
    }
    g.finish();
}

fn scoring(c: &mut Criterion) {
    let vocab = 151_936;
    let row = noise(vocab, 3).iter().map(|v| v * 16.0).collect::<Vec<_>>();
    let mut g = c.benchmark_group("score_row_vocab_151936");
    g.throughput(Throughput::Bytes((vocab * 4) as u64));
    g.bench_function("fused", |b| b.iter(|| row_stats(black_box(&row), 1234)));
    g.bench_function("naive_log_softmax_gather", |b| {
        b.iter(|| naive_row_stats(black_box(&row), 1234))
    });
    g.finish();
}

fn attn(c: &mut Criterion) {
    let t = 1024;
    let shape = AttnShape::new(14, 2, 64, None);
    let q = noise(t * 14 * 64, 4);
    let k = noise(t * 2 * 64, 5);
    let v = noise(t * 2 * 64, 6);
    let mut out = vec![0.0f32; t * 14 * 64];
    let mut g = c.benchmark_group("attention_causal_T1024_14h_gqa2");
    g.throughput(Throughput::Elements((2 * t * (t + 1) * 14 * 64) as u64));
    g.sample_size(10);
    g.bench_function("blocked", |b| {
        b.iter(|| attention(&q, &k, 128, &v, 128, 0, t, shape, &mut out))
    });
    // The bf16 mode's tile (vdpbf16ps where the CPU has it), side by side.
    g.bench_function("blocked_bf16", |b| {
        b.iter(|| attention_bf16(&q, &k, 128, &v, 128, 0, t, shape, &mut out))
    });
    g.finish();
}

criterion_group!(benches, gemm, scoring, attn);
criterion_main!(benches);
