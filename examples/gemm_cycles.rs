//! Fixed-work GEMM run for cycle counting under `perf stat` (FLOPs per core
//! cycle are meaningful even on a busy machine, unlike wall time):
//! `perf stat -e cycles cargo run --release --example gemm_cycles -- bf16 256 4864 896 50`

use padv::backend::cpu::gemm::matmul_wt;
use padv::model::weights::{Data, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dtype = args.get(1).map_or("bf16", String::as_str);
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (t, n, k, reps) = (num(2, 256), num(3, 4864), num(4, 896), num(5, 50));
    let x: Vec<f32> = (0..t * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let wf: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let wb: Vec<half::bf16> = wf.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let shape = [n, k];
    let data = if dtype == "f32" {
        Data::F32(&wf)
    } else {
        Data::BF16(&wb)
    };
    let w = Tensor {
        name: "w",
        shape: &shape,
        data,
    };
    let mut out = vec![0.0f32; t * n];
    let start = std::time::Instant::now();
    for _ in 0..reps {
        matmul_wt(&x, t, &w, &mut out, n, false);
    }
    let flops = 2.0 * (t * n * k * reps) as f64;
    eprintln!(
        "{:.3} GFLOP in {:.3}s wall = {:.1} GFLOP/s (wall; noisy on a busy machine)",
        flops / 1e9,
        start.elapsed().as_secs_f64(),
        flops / start.elapsed().as_secs_f64() / 1e9
    );
    std::hint::black_box(&out);
}
