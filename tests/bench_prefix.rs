//! `padv bench --prefix-cache` on the bundled toyworld pair with small
//! workloads: the cache-on side computes fewer tokens than were requested in
//! every scenario, and the cache-off side runs in the first two scenarios
//! (the third times the cache alone) with every score equal; the first
//! says where each side's time went.

use std::path::Path;
use std::sync::Mutex;

use padv::backend::Device;
use padv::bench::prefix::{PrefixBenchOptions, run};

/// The part timers (`backend::profile`) are process-wide: the tests of
/// this binary run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The bundled toyworld pair on the CPU, with the default workloads.
fn toyworld() -> PrefixBenchOptions {
    let tw = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models");
    let mut o = PrefixBenchOptions::new(tw.join("trained"), tw.join("ref"));
    o.device = Device::Cpu;
    o
}

#[test]
fn prefix_bench_saves_tokens_and_changes_no_score() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = toyworld();
    (o.prompt, o.steps, o.observation, o.action) = (96, 4, 24, 8);
    (o.rollouts, o.rollout_prompt, o.rollout_steps) = (3, 80, 2);
    let report = run(&o).unwrap();
    assert_eq!(report.rows.len(), 3, "{report:?}");
    for (i, row) in report.rows.iter().enumerate() {
        assert!(
            row.computed_on < row.requested_tokens && row.token_ratio > 1.0,
            "{row:?}"
        );
        let compared = i < 2;
        assert_eq!(row.wall_off_s.is_some(), compared, "{row:?}");
        let want = compared.then_some(0.0);
        assert_eq!(row.max_abs_diff, want, "{}: cache on vs off", row.name);
    }
    // The step-by-step scenario re-submits each conversation: most of it hits.
    assert!(report.rows[0].hit_rate > 0.5, "{:?}", report.rows[0]);
    // Its profiled passes (and only its) say where each side's time went:
    // GEMMs and attention timed, the parts within the pass's wall time.
    let (off, on) = report.rows[0].profiled.expect("a profiled pass");
    for p in [off, on] {
        let b = p.parts;
        assert!(b.gemm_s > 0.0 && b.attention_s > 0.0, "{p:?}");
        let parts = b.gemm_s + b.attention_s + b.lm_head_s + b.delta_rule_s;
        assert!(parts <= p.wall_s, "{p:?}");
    }
    assert!(report.rows[1..].iter().all(|r| r.profiled.is_none()));
    assert!(report.table().contains("where the time goes"));
}

#[test]
fn the_default_workloads_are_scaled_to_fit_a_short_model() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // toyworld has 1,024 positions; the default step-by-step trajectory
    // (512 + 10 × 96 tokens) is longer, so every count is scaled down, and
    // the report says by how much.
    let tw = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models");
    let mut o = PrefixBenchOptions::new(tw.join("trained"), tw.join("ref"));
    o.device = Device::Cpu;
    let report = run(&o).unwrap();
    let f = report.fitted.expect("scaled to fit");
    assert!(f > 0.5 && f < 1.0, "{f}");
    assert!(report.table().contains("to fit the model's positions"));
    assert!(
        report.rows.iter().all(|r| r.token_ratio > 1.0),
        "{report:?}"
    );
    // A short-enough workload is left as asked.
    (o.prompt, o.steps) = (100, 3);
    (o.rollout_prompt, o.rollout_steps) = (100, 2);
    assert_eq!(run(&o).unwrap().fitted, None);
}
