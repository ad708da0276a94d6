//! `padv bench --prefix-cache` on the bundled toyworld pair with small
//! workloads: the cache-on side computes fewer tokens than were requested in
//! every scenario, and where the cache-off side runs, every score is equal.

use std::path::Path;

use padv::backend::Device;
use padv::bench::prefix::{PrefixBenchOptions, run};

#[test]
fn prefix_bench_saves_tokens_and_changes_no_score() {
    let tw = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models");
    let mut o = PrefixBenchOptions::new(tw.join("trained"), tw.join("ref"));
    o.device = Device::Cpu;
    (o.prompt, o.steps, o.observation, o.action) = (96, 4, 24, 8);
    (o.rollouts, o.rollout_prompt, o.rollout_steps) = (3, 80, 2);
    let report = run(&o).unwrap();
    assert_eq!(report.rows.len(), 3, "{report:?}");
    for row in &report.rows {
        assert!(
            row.computed_on < row.requested_tokens && row.token_ratio > 1.0,
            "{row:?}"
        );
        if let Some(d) = row.max_abs_diff {
            assert_eq!(d, 0.0, "{}: cache on vs off differ", row.name);
        }
    }
    // The step-by-step scenario re-submits each conversation: most of it hits.
    assert!(report.rows[0].hit_rate > 0.5, "{:?}", report.rows[0]);
}
