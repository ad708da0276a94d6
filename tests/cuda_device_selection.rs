//! Device selection without a GPU (runs everywhere, with or without the
//! `cuda` feature): `--device cuda` is a clean error naming the reason, and
//! `--device auto` falls back to the CPU. With a usable GPU these cases are
//! covered by tests/cuda_parity.rs instead.
//!
//! Also the guard of GPU runs: with `PADV_REQUIRE_GPU` set, a build without
//! the `cuda` feature (whose GPU test files compile to nothing and pass
//! empty) or a machine without a usable device fails here.

use std::path::Path;
use std::sync::Arc;

use padv::backend::{Device, cuda, open_pair};
use padv::model::Model;

fn pair() -> (Arc<Model>, Arc<Model>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    (
        Arc::new(Model::load(&dir.join("trained")).unwrap()),
        Arc::new(Model::load(&dir.join("ref")).unwrap()),
    )
}

#[test]
fn cuda_device_without_a_gpu_is_an_error_that_says_why() {
    if let Ok(n) = cuda::probe() {
        eprintln!("skipping: {n} CUDA device(s) present (see cuda_parity.rs)");
        return;
    }
    let why = cuda::probe().unwrap_err();
    let (p, r) = pair();
    let err = open_pair(Device::Cuda(0), p, r)
        .err()
        .expect("cuda:0 must fail without a GPU");
    let msg = err.to_string();
    assert!(msg.contains("cuda:0") && msg.contains(&why), "{msg}");
    assert_eq!(cuda::device_count(), 0);
}

#[test]
fn auto_device_falls_back_to_the_cpu_without_a_gpu() {
    if cuda::device_count() > 0 {
        eprintln!("skipping: a CUDA device is present (see cuda_parity.rs)");
        return;
    }
    let (p, r) = pair();
    let scorer = open_pair(Device::Auto, p, r).unwrap();
    assert!(
        scorer.describe().starts_with("cpu"),
        "{}",
        scorer.describe()
    );
}

#[test]
fn requiring_a_gpu_fails_without_the_cuda_feature_or_a_device() {
    if std::env::var_os("PADV_REQUIRE_GPU").is_none() {
        return;
    }
    if !cfg!(feature = "cuda") {
        panic!(
            "PADV_REQUIRE_GPU is set but the tests were built without `--features cuda`: \
             no GPU test would run"
        );
    }
    if let Err(why) = cuda::probe() {
        panic!("PADV_REQUIRE_GPU is set but CUDA is unusable: {why}");
    }
}
