//! CUDA kernels run on the CPU: kernels/*.cu compiled as C++ against
//! tests/cuda_emu (one OS thread per CUDA thread, warp collectives and the
//! mma.sync / ldmatrix fragments emulated from the PTX definitions, cp.async
//! deferred to its wait), each checked by a driver against a direct f64
//! computation: the folded LM head (fold_driver.cpp), the fused scorer with
//! and without the soft-cap (fused_driver.cpp), the residual norms
//! and q/k/v RoPE kernels in the modes the GPU has not yet run
//! (norm_rope_driver.cpp: post-norm and sandwich blocks, full-width q/k
//! norms, a RoPE factor, Gemma's layer scalar, v norm and q-only layers),
//! the gated MLPs' activations and Gemma's per-layer input gate
//! (mlp_driver.cpp), the gated-DeltaNet steps (deltanet_driver.cpp:
//! convolution, q/k norms and gates, the recurrence token by token and in
//! chunks, the gated norm), Hopper's warpgroup products in attention's
//! layouts (wgmma_driver.cpp: kernels/wgmma_probe.cu, the descriptors and
//! swizzle read as tests/cuda_emu/wgmma_emu.h reads the PTX ISA), and
//! the attention kernels (attention_driver.cpp). The last (up to head_dim
//! 128) have passed their parity tests on an H200, so they also hold the
//! emulator itself to the hardware: a wrong fragment layout in mma_emu.h fails them. This pins the kernels' indexing, masks, pipeline
//! and merges on machines without a GPU (CI); speed and the hardware's own
//! arithmetic are the GPU tests' business.
//!
//! Needs a C++20 compiler (`CXX`, else `c++`); without one the test says so
//! and passes, unless `PADV_REQUIRE_CXX` is set.

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
const EMU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emu");

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let ok = Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(cxx);
    }
    if std::env::var_os("PADV_REQUIRE_CXX").is_some() {
        panic!("PADV_REQUIRE_CXX is set but `{cxx}` does not run");
    }
    eprintln!("skipping: no C++ compiler (`{cxx}`)");
    None
}

/// A build directory holding the kernel sources as the emulator includes
/// them: `common.cuh` behind emu.h without the CUDA headers, `mma.cuh`
/// replaced by mma_emu.h, the rest verbatim but for `extern __shared__`
/// (the driver defines that array).
fn stage(dir: &Path, sources: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for s in sources {
        let text = std::fs::read_to_string(Path::new(KERNELS).join(s)).unwrap();
        // The dynamic shared array is the driver's global (emu.h).
        std::fs::write(dir.join(s), text.replace("extern __shared__", "extern")).unwrap();
    }
    let common = std::fs::read_to_string(Path::new(KERNELS).join("common.cuh")).unwrap();
    let body: String = common
        .lines()
        .filter(|l| !l.starts_with("#pragma once") && !l.starts_with("#include <cuda_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        dir.join("common.cuh"),
        format!("#pragma once\n#include \"emu.h\"\n{body}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("mma.cuh"),
        "#pragma once\n#include \"mma_emu.h\"\n",
    )
    .unwrap();
    // wgmma.cuh stays the kernels' own (its swizzle and descriptor encoding
    // are under test) and includes wgmma_emu.h under PADV_CUDA_EMU.
    let wgmma = std::fs::read_to_string(Path::new(KERNELS).join("wgmma.cuh")).unwrap();
    std::fs::write(dir.join("wgmma.cuh"), wgmma).unwrap();
}

fn build_and_run(name: &str, driver: &str, sources: &[&str]) {
    let Some(cxx) = compiler() else { return };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-emu-{name}"));
    stage(&dir, sources);
    let exe = dir.join(name);
    let mut cmd = Command::new(&cxx);
    cmd.args(["-std=c++20", "-O2", "-pthread", "-w", "-DPADV_CUDA_EMU"])
        .args(padv::consts::FOR_NVCC.map(|(k, v)| format!("-D{k}={v}")))
        .arg("-I")
        .arg(&dir)
        .arg("-I")
        .arg(EMU)
        .arg("-o")
        .arg(&exe)
        .arg(Path::new(EMU).join(driver));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cxx} failed on {driver}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    eprintln!("{stdout}{stderr}");
    assert!(run.status.success(), "{name}: {}\n{stderr}", run.status);
}

#[test]
fn folded_lm_head_kernel_matches_the_direct_scores_on_the_cpu() {
    build_and_run(
        "lm_head_fold",
        "fold_driver.cpp",
        &["lm_head_fold.cu", "scoring.cuh"],
    );
}

#[test]
fn fused_scoring_kernel_matches_the_direct_scores_on_the_cpu() {
    build_and_run(
        "fused",
        "fused_driver.cpp",
        &["fused_logprob.cu", "scoring.cuh"],
    );
}

#[test]
fn norm_and_rope_kernels_match_direct_computation_on_the_cpu() {
    build_and_run(
        "norm_rope",
        "norm_rope_driver.cpp",
        &["rmsnorm.cu", "rope.cu"],
    );
}

#[test]
fn mlp_activation_and_per_layer_input_kernels_match_direct_computation_on_the_cpu() {
    build_and_run("mlp", "mlp_driver.cpp", &["act_mul.cu"]);
}

#[test]
fn deltanet_kernels_match_direct_computation_on_the_cpu() {
    build_and_run(
        "deltanet",
        "deltanet_driver.cpp",
        &["deltanet.cu", "delta_chunk.cu"],
    );
}

#[test]
fn wgmma_products_match_direct_products_on_the_cpu() {
    build_and_run("wgmma", "wgmma_driver.cpp", &["wgmma_probe.cu"]);
}

#[test]
fn attention_kernels_match_direct_attention_on_the_cpu() {
    build_and_run(
        "attention",
        "attention_driver.cpp",
        &["attention.cu", "attention_wg.cu", "attention_tile.cuh"],
    );
}
