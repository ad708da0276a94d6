//! β and the policy's confidence baselines against transformers
//! (tests/fixtures/expected/baselines_{llama,qwen2}.json, computed without
//! padv): per-token entropy and mean top-20 log-prob (self-certainty) over
//! the model's whole vocabulary (qwen2's padded rows included), the step
//! advantages at β = 0.5 with token aggregation `sum`, and the trajectory
//! baselines built from them here (entropy, self-certainty, DeepConf tail and
//! bottom-10%) — through the library and through `padv score --tokens`.

mod cli_common;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cli_common::{padv, pair_args, succeed};
use common::read_all;
use padv::backend::Device;
use padv::pipeline::{ScoredRecord, Scorer, ScorerOptions};
use padv::score::aggregate::TokenAgg;
use serde_json::Value;

const BETA: f64 = 0.5;
/// Per-token entropy and self-certainty: the 1e-4 budget of an f32 forward
/// against transformers (tests/hf_parity.rs).
const TOKEN_TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn input() -> PathBuf {
    fixtures().join("inputs/tiny_trajectories.jsonl")
}

fn load_json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(rel)).unwrap()).unwrap()
}

/// A per-token array with `null` as NaN.
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// What transformers says about one record, and what follows from it.
struct Expected {
    id: String,
    token_ids: Vec<u64>,
    entropy: Vec<f64>,
    self_certainty: Vec<f64>,
    /// Chat records: each action's β·Σ diff.
    advantages: Option<Vec<f64>>,
    /// Chat records: the runs of the action mask.
    spans: Vec<(usize, usize)>,
}

impl Expected {
    fn step_means(&self, per_token: &[f64]) -> Vec<f64> {
        self.spans
            .iter()
            .map(|&(a, b)| mean(&per_token[a..b]))
            .collect()
    }

    /// The trajectory baselines with step aggregation `mean`: entropy is
    /// negated, DeepConf tail is the last step's self-certainty and
    /// bottom-10% the mean of the lowest ⌈10%⌉ (at least one) of them.
    fn baselines(&self) -> BTreeMap<&'static str, f64> {
        let sc = self.step_means(&self.self_certainty);
        let entropy = self.step_means(&self.entropy);
        let mut sorted = sc.clone();
        sorted.sort_by(f64::total_cmp);
        let k = (sorted.len() as f64 / 10.0).ceil().max(1.0) as usize;
        BTreeMap::from([
            ("entropy", -mean(&entropy)),
            ("self_certainty", mean(&sc)),
            ("deepconf_tail", *sc.last().unwrap()),
            ("deepconf_bottom10", mean(&sorted[..k])),
        ])
    }
}

/// Runs of 1 in an action mask, as `[start, end)`.
fn runs(mask: &[Value]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (t, m) in mask.iter().chain([&Value::from(0)]).enumerate() {
        match (m.as_u64() == Some(1), start) {
            (true, None) => start = Some(t),
            (false, Some(a)) => {
                out.push((a, t));
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn expected(pair: &str) -> Vec<Expected> {
    let baselines = load_json(&format!("expected/baselines_{pair}.json"));
    let tiny = load_json(&format!("expected/tiny_{pair}.json"));
    let (records, masks) = (
        baselines["records"].as_array().unwrap(),
        tiny["records"].as_array().unwrap(),
    );
    assert_eq!(records.len(), masks.len());
    records
        .iter()
        .zip(masks)
        .map(|(r, m)| {
            assert_eq!(r["id"], m["id"]);
            let spans = m
                .get("action_mask")
                .map_or(Vec::new(), |mask| runs(mask.as_array().unwrap()));
            let advantages = r.get("advantage_steps_beta0.5_tokenagg_sum").map(floats);
            if let Some(a) = &advantages {
                assert_eq!(a.len(), spans.len(), "one advantage per action");
            }
            Expected {
                id: r["id"].as_str().unwrap().to_string(),
                token_ids: ids(&r["token_ids"]),
                entropy: floats(&r["entropy_policy"]),
                self_certainty: floats(&r["self_certainty"]),
                advantages,
                spans,
            }
        })
        .collect()
}

/// One action step as padv reports it.
struct GotStep {
    advantage: f64,
    entropy: f64,
    self_certainty: f64,
}

/// One record as padv reports it (library or CLI).
struct Got {
    id: String,
    token_ids: Vec<u64>,
    entropy: Vec<f64>,
    self_certainty: Vec<f64>,
    steps: Vec<GotStep>,
    score: Option<f64>,
    baselines: BTreeMap<String, f64>,
}

fn from_library(s: &ScoredRecord) -> Got {
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect();
    Got {
        id: s.record.id.clone(),
        token_ids: s.encoded.token_ids.iter().map(|&t| t as u64).collect(),
        entropy: wide(&s.tokens.entropy_policy),
        self_certainty: wide(&s.tokens.self_certainty),
        steps: s
            .steps
            .iter()
            .map(|st| GotStep {
                advantage: st.advantage.unwrap(),
                entropy: st.entropy.unwrap(),
                self_certainty: st.self_certainty.unwrap(),
            })
            .collect(),
        score: s.score,
        baselines: s
            .baselines
            .iter()
            .filter_map(|(m, v)| Some((m.name().to_string(), (*v)?)))
            .collect(),
    }
}

fn from_cli(v: &Value) -> Got {
    let steps = v["steps"].as_array().map_or(Vec::new(), |steps| {
        steps
            .iter()
            .map(|st| GotStep {
                advantage: st["advantage"].as_f64().unwrap(),
                entropy: st["entropy"].as_f64().unwrap(),
                self_certainty: st["self_certainty"].as_f64().unwrap(),
            })
            .collect()
    });
    let baselines = v["baselines"].as_object().map_or(BTreeMap::new(), |b| {
        b.iter()
            .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
            .collect()
    });
    Got {
        id: v["id"].as_str().unwrap().to_string(),
        token_ids: ids(&v["token_ids"]),
        entropy: floats(&v["entropy_policy"]),
        self_certainty: floats(&v["self_certainty"]),
        steps,
        score: v["score"].as_f64(),
        baselines,
    }
}

fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: padv {got}, transformers {want} (tol {tol:e})"
    );
}

fn check(how: &str, pair: &str, got: &[Got]) {
    let want = expected(pair);
    assert_eq!(got.len(), want.len(), "{how} {pair}: records");
    let mut n_trajectories = 0;
    for (g, w) in got.iter().zip(&want) {
        let at = format!("{how} {pair}/{}", w.id);
        assert_eq!(g.id, w.id);
        assert_eq!(g.token_ids, w.token_ids, "{at}: token ids");
        for (key, gv, wv) in [
            ("entropy_policy", &g.entropy, &w.entropy),
            ("self_certainty", &g.self_certainty, &w.self_certainty),
        ] {
            assert_eq!(gv.len(), wv.len(), "{at} {key}: length");
            assert!(
                gv[0].is_nan() && wv[0].is_nan(),
                "{at} {key}: index 0 is unscored"
            );
            for t in 1..wv.len() {
                assert_near(&format!("{at} {key}[{t}]"), gv[t], wv[t], TOKEN_TOL);
            }
        }
        let Some(advantages) = &w.advantages else {
            assert!(
                g.steps.is_empty() && g.score.is_none(),
                "{at}: not a trajectory"
            );
            continue;
        };
        n_trajectories += 1;
        assert_eq!(g.steps.len(), advantages.len(), "{at}: steps");
        let (entropy, sc) = (w.step_means(&w.entropy), w.step_means(&w.self_certainty));
        // A step sums two log-probs over its tokens, times β.
        let tols: Vec<f64> = w
            .spans
            .iter()
            .map(|(a, b)| BETA * 2.0 * (b - a) as f64 * TOKEN_TOL)
            .collect();
        for (k, ((st, &a), (&e, &c))) in g
            .steps
            .iter()
            .zip(advantages)
            .zip(entropy.iter().zip(&sc))
            .enumerate()
        {
            let what = format!("{at} steps[{k}].advantage");
            assert_near(&what, st.advantage, a, tols[k]);
            assert_near(
                &format!("{at} steps[{k}].entropy"),
                st.entropy,
                e,
                TOKEN_TOL,
            );
            let what = format!("{at} steps[{k}].self_certainty");
            assert_near(&what, st.self_certainty, c, TOKEN_TOL);
        }
        let score = g.score.expect("a trajectory has a score");
        let tol = tols.iter().copied().fold(0.0, f64::max);
        assert_near(&format!("{at} score"), score, mean(advantages), tol);
        let baselines = w.baselines();
        for (name, want) in &baselines {
            let got = *g
                .baselines
                .get(*name)
                .unwrap_or_else(|| panic!("{at}: no baseline {name}"));
            assert_near(&format!("{at} baseline {name}"), got, *want, TOKEN_TOL);
        }
    }
    assert_eq!(n_trajectories, 2, "{pair}: both chat records checked");
}

fn library(pair: &str) -> Vec<Got> {
    let dir = fixtures().join("models").join(pair);
    let opts = ScorerOptions {
        device: Device::Cpu,
        beta: BETA,
        token_agg: TokenAgg::Sum,
        with_tokens: true,
        ..ScorerOptions::default()
    };
    let mut scorer = Scorer::load(&dir.join("trained"), &dir.join("ref"), opts).unwrap();
    scorer
        .score(&read_all(&input()))
        .iter()
        .map(|s| from_library(s.as_ref().unwrap()))
        .collect()
}

fn cli(pair: &str) -> Vec<Got> {
    let dir = fixtures().join("models").join(pair);
    let out = succeed(
        padv()
            .args(["score", "--device", "cpu", "--tokens", "--output", "-"])
            .args(["--beta", "0.5", "--token-agg", "sum", "--step-agg", "mean"])
            .args(pair_args(&dir))
            .arg("--input")
            .arg(input()),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| from_cli(&serde_json::from_str(l).unwrap()))
        .collect()
}

#[test]
fn llama_baselines_and_beta_match_transformers_through_the_library() {
    check("library", "llama", &library("llama"));
}

#[test]
fn qwen2_baselines_over_the_padded_vocab_match_transformers_through_the_library() {
    check("library", "qwen2", &library("qwen2"));
}

#[test]
fn llama_baselines_and_beta_match_transformers_through_the_cli() {
    check("cli", "llama", &cli("llama"));
}

#[test]
fn qwen2_baselines_over_the_padded_vocab_match_transformers_through_the_cli() {
    check("cli", "qwen2", &cli("qwen2"));
}
