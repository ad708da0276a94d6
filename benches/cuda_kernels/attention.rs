//! Attention benchmarks: causal attention alone by kernel, and an agent
//! step over a cached context.

use padv::backend::cpu::ops::AttnShape;
use padv::backend::cuda::cudarc::driver::CudaSlice;
use padv::backend::cuda::forward::PagedBatch;
use padv::backend::cuda::kernels::AttnKernel;
use padv::backend::cuda::{DevTensor, Gpu};
use padv::model::weights::DType;

use criterion::Criterion;

use super::{Summary, configure, median, timed};

/// One attention call's operands on the device: random Q (f32) and a bf16
/// K/V pool laid out by `layout`, uploaded once.
struct AttnCall {
    layout: PagedBatch,
    shape: AttnShape,
    q: DevTensor,
    k: DevTensor,
    v: DevTensor,
    out: DevTensor,
    table: CudaSlice<i32>,
    starts: CudaSlice<i32>,
    past: CudaSlice<i32>,
    tiles: CudaSlice<i32>,
}

impl AttnCall {
    fn new(
        gpu: &Gpu,
        layout: PagedBatch,
        (heads, kv_heads, hd): (usize, usize, usize),
        seed: u64,
    ) -> AttnCall {
        let n = layout.tokens();
        let pool = layout.pool_rows() * kv_heads * hd;
        let mut q = DevTensor::alloc(gpu, DType::BF16, n * heads * hd).unwrap();
        let mut k = DevTensor::alloc(gpu, DType::BF16, pool).unwrap();
        let mut v = DevTensor::alloc(gpu, DType::BF16, pool).unwrap();
        for (i, t) in [&mut q, &mut k, &mut v].into_iter().enumerate() {
            gpu.fill_uniform(&mut t.all_mut(), seed + i as u64, -1.0, 1.0)
                .unwrap();
        }
        AttnCall {
            shape: AttnShape::new(heads, kv_heads, hd, None),
            q,
            k,
            v,
            out: DevTensor::alloc(gpu, DType::BF16, n * heads * hd).unwrap(),
            table: gpu.upload(&layout.block_table).unwrap(),
            starts: gpu.upload(&layout.seq_start).unwrap(),
            past: gpu.upload(&layout.past).unwrap(),
            tiles: gpu.upload(&layout.tiles).unwrap(),
            layout,
        }
    }

    fn run(&mut self, gpu: &Gpu, kernel: AttnKernel, splits: usize) -> padv::Result<()> {
        gpu.paged_attention(
            kernel,
            &self.q.all(),
            &self.k.all(),
            &self.v.all(),
            &self.table.as_view(),
            &self.starts.as_view(),
            &self.past.as_view(),
            &self.tiles.as_view(),
            self.layout.max_blocks,
            &mut self.out.all_mut(),
            self.shape,
            splits,
        )
    }
}

/// Causal attention alone, SIMT vs tensor-core kernel, on the 0.5B and 7B
/// head geometries and at head_dim 256 and 512 (Qwen 3.5's and Gemma 4's
/// wide heads; 16 query heads there) — bf16 cache, 2 × 4096 queries. A
/// kernel that does not run at a head_dim (double-buffered at 512) is
/// skipped. FLOPs count the attention's own (4 per query-key pair and head
/// dim), so hd 512's recomputed Q·Kᵀ shows as a lower rate.
pub(super) fn bench_attention(c: &mut Criterion, gpu: &Gpu, s: &mut Summary) {
    let mut g = c.benchmark_group("attention");
    configure(&mut g, false);
    for (label, heads, kv_heads, hd) in [
        ("0.5b", 14usize, 2usize, 64usize),
        ("7b", 28, 4, 128),
        ("hd256", 16, 2, 256),
        ("hd512", 16, 4, 512),
    ] {
        let lens = [4096usize, 4096];
        let mut call = AttnCall::new(gpu, PagedBatch::new(&lens), (heads, kv_heads, hd), 11);
        let pairs: f64 = lens.iter().map(|&l| (l * (l + 1) / 2) as f64).sum();
        let flops = 4.0 * pairs * (heads * hd) as f64;
        let mut rates = Vec::new();
        for kernel in [
            AttnKernel::Simt,
            AttnKernel::TensorCore,
            AttnKernel::Pipelined,
            AttnKernel::Warpgroup,
        ] {
            if !gpu.attention_runs(kernel, DType::BF16, hd) {
                rates.push(None);
                continue;
            }
            let name = format!("attention_{label}_{kernel:?}_2x4096");
            timed(&mut g, &name, gpu, || call.run(gpu, kernel, 0));
            rates.push(median(&name).map(|t| flops / t / 1e12));
        }
        if let [Some(simt), Some(tc), pipe, wg] = rates[..] {
            let (mut pipe_rate, mut pipe_ratio) = (String::new(), String::new());
            for (rate, what) in [(pipe, "double-buffered"), (wg, "wgmma")] {
                if let Some(p) = rate {
                    pipe_rate += &format!(" ({p:.0} {what})");
                    pipe_ratio += &format!("; {what} {:.2}×", p / tc);
                }
            }
            s.lines.push(format!(
                "| attention {label} (h{heads}/{kv_heads}, hd{hd}), 2×4096, bf16 | {tc:.0} TFLOP/s tensor cores\
                 {pipe_rate}, {simt:.1} SIMT | {:.1}×{pipe_ratio} |",
                tc / simt,
            ));
        }
    }
    g.finish();
}

/// An agent step over a cached context: 256 new queries after 4,096 cached
/// keys (one sequence, 0.5B heads), the tensor-core kernel with one block
/// per (tile, head) against the key range split to fill the GPU.
pub(super) fn bench_attention_step(c: &mut Criterion, gpu: &Gpu, s: &mut Summary) {
    let mut g = c.benchmark_group("attention_step");
    configure(&mut g, false);
    let layout = PagedBatch::with_past(&[(4096, 256)]);
    let mut call = AttnCall::new(gpu, layout, (14, 2, 64), 21);
    let mut times = Vec::new();
    for (kernel, splits) in [
        (AttnKernel::TensorCore, 1usize),
        (AttnKernel::TensorCore, 0),
        (AttnKernel::Pipelined, 0),
        (AttnKernel::Warpgroup, 0),
    ] {
        if !gpu.attention_runs(kernel, DType::BF16, 64) {
            times.push(None);
            continue;
        }
        let name = format!("attention_step_0.5b_{kernel:?}_splits{splits}_4096+256");
        timed(&mut g, &name, gpu, || call.run(gpu, kernel, splits));
        times.push(median(&name));
    }
    if let [Some(one), Some(auto), Some(pipe), wg] = times[..] {
        let wg = wg.map_or(String::new(), |w| format!(", {:.1} wgmma", w * 1e6));
        s.lines.push(format!(
            "| attention step 0.5b, 256 queries after 4096 cached keys | {:.1} µs split KV \
             ({:.1} double-buffered{wg}), {:.1} µs one block per tile | {:.1}× |",
            auto * 1e6,
            pipe * 1e6,
            one * 1e6,
            one / auto
        ));
    }
    g.finish();
}
