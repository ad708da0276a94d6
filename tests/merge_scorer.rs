//! Merged references through the library and `padv serve`: changing α on a
//! loaded scorer gives what a fresh load at that α gives (no cached block
//! crosses α values), a sweep equals separate runs, and the server scores
//! against π_α and says so.

mod serve_common;

use std::path::{Path, PathBuf};

use padv::backend::Device;
use padv::model::{MergeMethod, MergeOptions};
use padv::pipeline::{ScoredRecord, Scorer, ScorerOptions};
use padv::trajectory::{Record, read_records};
use serde_json::json;

use serve_common::{checked, client, demo_records, start};

fn pair() -> (PathBuf, PathBuf) {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    (m.join("trained"), m.join("ref"))
}

fn records() -> Vec<Record> {
    let input =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inputs/tiny_trajectories.jsonl");
    read_records(&input, None)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn load(merge: Option<MergeOptions>, prefix_cache: bool) -> Scorer {
    let (p, r) = pair();
    let opts = ScorerOptions {
        device: Device::Cpu,
        with_tokens: true,
        prefix_cache,
        merge,
        ..ScorerOptions::default()
    };
    Scorer::load(&p, &r, opts).unwrap()
}

fn logps(scored: Vec<padv::Result<ScoredRecord>>) -> Vec<(Vec<f32>, Vec<f32>)> {
    scored
        .into_iter()
        .map(|s| {
            let t = s.unwrap().tokens;
            (t.logp_policy, t.logp_reference)
        })
        .collect()
}

/// Bit patterns, so NaN at the unscored position 0 compares equal.
fn bits(v: &[(Vec<f32>, Vec<f32>)]) -> Vec<(Vec<u32>, Vec<u32>)> {
    let b = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect();
    v.iter().map(|(p, r)| (b(p), b(r))).collect()
}

#[test]
fn changing_alpha_on_a_loaded_scorer_equals_a_fresh_load_with_the_cache_on() {
    let recs = records();
    let ties = |alpha| Some(MergeOptions::new(MergeMethod::Ties, alpha));
    let mut scorer = load(ties(0.3), true);
    let at_03 = bits(&logps(scorer.score(&recs)));
    scorer.set_alpha(0.8).unwrap();
    assert_eq!(scorer.alpha(), Some(0.8));
    let at_08 = bits(&logps(scorer.score(&recs)));
    assert_eq!(at_08, bits(&logps(load(ties(0.8), true).score(&recs))));
    assert_ne!(at_03, at_08);
    // Back at 0.3, the same numbers again (nothing cached under 0.8 is used).
    scorer.set_alpha(0.3).unwrap();
    assert_eq!(bits(&logps(scorer.score(&recs))), at_03);
}

#[test]
fn a_sweep_equals_separate_runs_with_the_policy_scored_once() {
    let recs = records();
    let dare = |alpha| {
        Some(MergeOptions {
            seed: 11,
            ..MergeOptions::new(MergeMethod::DareLinear, alpha)
        })
    };
    let mut scorer = load(dare(0.5), true);
    let sweep = scorer.score_sweep(&recs, &[0.2, 0.9, 0.5]).unwrap();
    assert_eq!(sweep.len(), 3);
    for (alpha, got) in [0.2, 0.9, 0.5].into_iter().zip(sweep) {
        for s in got.iter().flatten() {
            assert_eq!(s.merge.as_ref().map(|m| m.alpha), Some(alpha));
        }
        let want = logps(load(dare(alpha), false).score(&recs));
        assert_eq!(bits(&logps(got)), bits(&want), "α = {alpha}");
    }
}

#[test]
fn alpha_needs_a_merge_and_a_value_in_range() {
    let mut plain = load(None, false);
    assert!(
        plain
            .set_alpha(0.5)
            .unwrap_err()
            .to_string()
            .contains("merge")
    );
    let mut merged = load(Some(MergeOptions::new(MergeMethod::Linear, 0.5)), false);
    assert!(
        merged
            .set_alpha(1.5)
            .unwrap_err()
            .to_string()
            .contains("[0, 1]")
    );
    let (p, r) = pair();
    let bad = ScorerOptions {
        merge: Some(MergeOptions {
            density: 0.0,
            ..MergeOptions::new(MergeMethod::Ties, 0.5)
        }),
        ..ScorerOptions::default()
    };
    let e = Scorer::load(&p, &r, bad).err().unwrap().to_string();
    assert!(e.contains("density"), "{e}");
}

#[test]
fn the_server_scores_against_the_merged_reference_and_says_so() {
    let merge = MergeOptions::new(MergeMethod::Ties, 0.4);
    let server = start(|c| c.options.merge = Some(merge.clone()));
    let mut http = client(&server);
    let m = checked(&http.get("/v1/models").unwrap(), "GET", "/v1/models");
    assert_eq!(
        m["merge"],
        json!({"method": "ties", "alpha": 0.4, "density": 0.2})
    );
    let records = demo_records(2);
    let r = http
        .post_json("/v1/score", &json!({"trajectories": records}))
        .unwrap();
    let body = checked(&r, "POST", "/v1/score");
    let results = body["results"].as_array().unwrap();
    // The library at the same settings gives the same scores.
    let toy = serve_common::toyworld().join("models");
    let opts = ScorerOptions {
        device: Device::Cpu,
        merge: Some(merge),
        ..padv::serve::ServeConfig::toyworld().unwrap().options
    };
    let mut lib = Scorer::load(&toy.join("trained"), &toy.join("ref"), opts).unwrap();
    let recs: Vec<Record> = read_records(&serve_common::demo_path(), None)
        .unwrap()
        .into_iter()
        .take(2)
        .map(Result::unwrap)
        .collect();
    for (got, want) in results.iter().zip(lib.score(&recs)) {
        let want = want.unwrap();
        assert_eq!(got["alpha"], 0.4);
        assert_eq!(got["settings"]["merge"]["method"], "ties");
        assert_eq!(got["score"].as_f64(), want.score);
    }
}
