//! scripts/gpu-check.sh cannot report a GPU run as passed when it ran
//! nothing: its `check-ran` step fails a test binary's log that reports fewer
//! passed tests than the binary's source holds GPU tests (counted here on
//! their own: every test of a file compiled only with the `cuda` feature,
//! else the tests marked `#[cfg(feature = "cuda")]`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test binaries `gpu-check.sh run` runs.
const GPU_TEST_FILES: [&str; 4] = [
    "cuda_kernel_parity",
    "cuda_scoring_parity",
    "cuda_parity",
    "toyworld_steps",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gpu_tests(name: &str) -> usize {
    let src = std::fs::read_to_string(root().join(format!("tests/{name}.rs"))).unwrap();
    let lines: Vec<&str> = src.lines().map(str::trim).collect();
    let gated = "#[cfg(feature = \"cuda\")]";
    let whole_file = lines.contains(&"#![cfg(feature = \"cuda\")]");
    (0..lines.len())
        .filter(|&i| lines[i] == "#[test]" && (whole_file || i > 0 && lines[i - 1] == gated))
        .count()
}

/// Whether `gpu-check.sh check-ran NAME LOG` accepts `log`.
fn accepted(dir: &Path, name: &str, log: &str) -> bool {
    let path = dir.join(format!("{name}.log"));
    std::fs::write(&path, log).unwrap();
    let out = Command::new("bash")
        .arg(root().join("scripts/gpu-check.sh"))
        .args(["check-ran", name])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("gpu-check: {name}: ")), "{said}");
    out.status.success()
}

fn summary(passed: usize) -> String {
    format!(
        "running {passed} tests\ntest result: ok. {passed} passed; 0 failed; 0 ignored; \
         0 measured; 0 filtered out; finished in 0.01s\n"
    )
}

#[test]
fn the_gpu_check_fails_a_run_that_passed_fewer_tests_than_the_sources_hold() {
    let dir = tempfile::tempdir().unwrap();
    for name in GPU_TEST_FILES {
        let n = gpu_tests(name);
        assert!(n > 0, "{name} holds no GPU test");
        assert!(accepted(dir.path(), name, &summary(n)), "{name}: all ran");
        for short in [summary(n - 1), summary(0), "Segmentation fault\n".into()] {
            assert!(!accepted(dir.path(), name, &short), "{name}: {short}");
        }
    }
}
