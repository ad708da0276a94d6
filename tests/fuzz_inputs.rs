//! Seeded, bounded fuzzing of what users send: the record reader (JSONL
//! files with bytes and JSON values mutated), the scorer on every record the
//! reader accepts, and each POST endpoint of `padv serve`. A few thousand
//! cases, a few seconds, the same cases on every run (a failure names its
//! seed and case so it can be replayed).
//!
//! What must hold: no panic; one result per non-blank input line, an error
//! starting with `file:line`; every scored number finite; every HTTP answer
//! a status the route documents, never a 5xx, with a JSON error body.

mod serve_common;

use std::path::PathBuf;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use padv::pipeline::{Scorer, ScorerOptions};
use padv::score::aggregate::TokenAgg;
use padv::trajectory::read_records;
use serve_common::{checked, client, demo_records, start, toyworld};

const SEED: u64 = 0x009a_d513;

/// Values that break assumptions when put where another value was.
fn odd_value(rng: &mut SmallRng) -> Value {
    match rng.random_range(0..16) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(1e308),
        3 => json!(""),
        4 => json!([]),
        5 => json!({}),
        6 => json!("x".repeat(rng.random_range(0..3000))),
        7 => json!(u64::MAX),
        8 => json!(true),
        9 => json!("\u{0}\u{FFFF}\u{1F600}<|im_end|>"),
        10 => json!({"role": "assistant", "content": "go north"}),
        11 => json!({"role": "user"}),
        12 => json!([{"role": "oracle", "content": 3}]),
        13 => json!(-0.0),
        14 => (0..40).fold(json!(1), |v, _| json!([v])),
        _ => json!(rng.random_range(-1000..1000)),
    }
}

/// Replace, remove or add one value somewhere inside `v`.
fn mutate_value(v: &mut Value, rng: &mut SmallRng) {
    let depth = rng.random_range(0..6);
    mutate_at(v, rng, depth);
}

/// Go `depth` levels down a random path (while there is one), then mutate.
fn mutate_at(at: &mut Value, rng: &mut SmallRng, depth: usize) {
    if depth > 0 {
        match at {
            Value::Array(a) if !a.is_empty() => {
                let i = rng.random_range(0..a.len());
                return mutate_at(&mut a[i], rng, depth - 1);
            }
            Value::Object(o) if !o.is_empty() => {
                let i = rng.random_range(0..o.len());
                if let Some(child) = o.values_mut().nth(i) {
                    return mutate_at(child, rng, depth - 1);
                }
            }
            _ => {}
        }
    }
    match (at, rng.random_range(0..4)) {
        (Value::Object(o), 0) if !o.is_empty() => {
            let i = rng.random_range(0..o.len());
            let k = o.keys().nth(i).cloned().unwrap_or_default();
            o.remove(&k);
        }
        (Value::Object(o), 1) => {
            let keys = [
                "id",
                "messages",
                "role",
                "content",
                "tool_calls",
                "failure_step",
                "text",
            ];
            o.insert(keys[rng.random_range(0..keys.len())].into(), odd_value(rng));
        }
        (Value::Array(a), 0) if !a.is_empty() => {
            a.remove(rng.random_range(0..a.len()));
        }
        (Value::Array(a), 1) => {
            let i = rng.random_range(0..=a.len());
            a.insert(i, odd_value(rng));
        }
        (slot, _) => *slot = odd_value(rng),
    }
}

/// Byte-level damage: cut, splice, flip, or insert bytes that are not UTF-8.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut SmallRng) {
    if b.is_empty() {
        b.push(b'{');
        return;
    }
    let i = rng.random_range(0..b.len());
    match rng.random_range(0..6) {
        0 => b.truncate(i),
        1 => {
            let n = rng.random_range(1..=16.min(b.len() - i));
            b.drain(i..i + n);
        }
        2 => b[i] = rng.random(),
        3 => {
            let junk: &[u8] = match rng.random_range(0..6) {
                0 => b"\xff\xfe",
                1 => b"\n",
                2 => b"\"",
                3 => b"}",
                4 => b"\\u",
                _ => b"\r\n\n",
            };
            b.splice(i..i, junk.iter().copied());
        }
        4 => {
            let j = rng.random_range(i..b.len());
            let span = b[i..=j].to_vec();
            b.splice(j..j, span);
        }
        _ => b.insert(i, 0),
    }
}

/// The 1-based numbers of the lines `padv` reads as records (non-blank).
fn record_lines(bytes: &[u8]) -> Vec<usize> {
    bytes
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| std::str::from_utf8(l).map_or(true, |s| !s.trim().is_empty()))
        .map(|(i, _)| i + 1)
        .collect()
}

fn demo_lines() -> Vec<String> {
    demo_records(24).iter().map(Value::to_string).collect()
}

fn toy_scorer() -> Scorer {
    let models = toyworld().join("models");
    let opts = ScorerOptions {
        token_agg: TokenAgg::Sum,
        ..ScorerOptions::default()
    };
    Scorer::load(&models.join("trained"), &models.join("ref"), opts).unwrap()
}

/// Every number in a scored record's JSON is finite (serde_json cannot
/// hold NaN: a non-finite value would have become `null`, so also check
/// that a trajectory with steps has a score only when every step has one).
fn check_scored(json: &Value, case: &str) {
    let steps = json["steps"].as_array().cloned().unwrap_or_default();
    let all_valued = steps
        .iter()
        .all(|s| s["advantage"].is_number() || s["truncated"] == true);
    if !steps.is_empty() && !all_valued {
        assert!(
            json["score"].is_null(),
            "{case}: a score from missing steps: {json}"
        );
    }
}

#[test]
fn the_record_reader_and_scorer_survive_mutated_jsonl_files() {
    let mut rng = SmallRng::seed_from_u64(SEED);
    let base = demo_lines();
    let dir = tempfile::tempdir().unwrap();
    let mut scorer = toy_scorer();
    let (mut lines_tried, mut read_ok, mut scored) = (0, 0, 0);
    for case in 0..300 {
        let mut text = Vec::new();
        for _ in 0..10 {
            let mut v: Value =
                serde_json::from_str(&base[rng.random_range(0..base.len())]).unwrap();
            let mut line = if rng.random_bool(0.5) {
                for _ in 0..rng.random_range(1..4) {
                    mutate_value(&mut v, &mut rng);
                }
                v.to_string().into_bytes()
            } else {
                v.to_string().into_bytes()
            };
            if rng.random_bool(0.5) {
                for _ in 0..rng.random_range(1..4) {
                    mutate_bytes(&mut line, &mut rng);
                }
            }
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let path: PathBuf = dir.path().join(format!("case{case}.jsonl"));
        std::fs::write(&path, &text).unwrap();
        let at = format!("seed {SEED:#x} case {case} ({})", path.display());
        let results = read_records(&path, None).unwrap_or_else(|e| panic!("{at}: {e}"));
        let numbers = record_lines(&text);
        assert_eq!(
            results.len(),
            numbers.len(),
            "{at}: one result per non-blank line"
        );
        lines_tried += numbers.len();
        let mut records = Vec::new();
        for (r, n) in results.into_iter().zip(&numbers) {
            match r {
                Ok(rec) => records.push(rec),
                Err(e) => {
                    let loc = format!("{}:{n}", path.display());
                    assert!(
                        e.to_string().starts_with(&loc),
                        "{at}: `{e}` does not start with {loc}"
                    );
                }
            }
        }
        read_ok += records.len();
        let out = scorer.score(&records);
        assert_eq!(
            out.len(),
            records.len(),
            "{at}: one score result per record"
        );
        for s in out.into_iter().flatten() {
            scored += 1;
            check_scored(&scorer.to_json(&s), &at);
        }
    }
    eprintln!("{lines_tried} lines: {read_ok} read as records, {scored} scored");
    assert!(
        read_ok > 100 && read_ok < lines_tried,
        "the mutations should both keep and break records"
    );
}

/// A body for `route`, from a valid one, damaged as JSON or as bytes.
fn mutated_body(valid: &Value, rng: &mut SmallRng) -> Vec<u8> {
    let mut v = valid.clone();
    for _ in 0..rng.random_range(0..4) {
        mutate_value(&mut v, rng);
    }
    let mut b = v.to_string().into_bytes();
    if rng.random_bool(0.3) {
        mutate_bytes(&mut b, rng);
    }
    b
}

#[test]
fn every_post_endpoint_answers_mutated_bodies_with_a_documented_status() {
    let server = start(|c| c.max_request_bytes = 64 << 10);
    let mut http = client(&server);
    let mut rng = SmallRng::seed_from_u64(SEED ^ 0x5e);
    let records = demo_records(4);
    let open = |http: &mut padv::serve::client::Client| -> String {
        let r = http
            .post_json(
                "/v1/sessions",
                &json!({"messages": [records[0]["messages"][0]]}),
            )
            .unwrap();
        r.json().unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut session = open(&mut http);
    let mut statuses = std::collections::BTreeMap::<(String, u16), usize>::new();
    for case in 0..2000 {
        if case % 50 == 0 {
            session = open(&mut http);
        }
        let (route, path, valid) = match case % 4 {
            0 => (
                "/v1/score",
                "/v1/score".to_string(),
                json!({"trajectories": [records[case % 4]], "beta": 1.0, "tokens": false}),
            ),
            1 => (
                "/v1/sessions",
                "/v1/sessions".to_string(),
                json!({"messages": records[case % 4]["messages"].as_array().unwrap()[..2], "token_agg": "sum"}),
            ),
            2 => (
                "/v1/sessions/{id}/steps",
                format!("/v1/sessions/{session}/steps"),
                if rng.random_bool(0.5) {
                    json!({"observation": "at 1 1 .", "action": "go north"})
                } else {
                    json!({"observation": "at 1 1 .", "candidates": ["wait", "go east"]})
                },
            ),
            _ => (
                "/v1/sessions/{id}/fork",
                format!("/v1/sessions/{session}/fork"),
                json!({}),
            ),
        };
        let body = mutated_body(&valid, &mut rng);
        let at = format!(
            "seed case {case}: POST {path} {}",
            String::from_utf8_lossy(&body)
        );
        let r = http
            .post_bytes(&path, &body)
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        assert!(r.status < 500, "{at}: {} {}", r.status, r.text());
        let v = checked(&r, "POST", route);
        if r.status >= 400 {
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{at}: {v}"
            );
        }
        *statuses.entry((route.to_string(), r.status)).or_default() += 1;
    }
    eprintln!("{statuses:?}");
    // Both kinds of answer were reached on every route.
    for route in [
        "/v1/score",
        "/v1/sessions",
        "/v1/sessions/{id}/steps",
        "/v1/sessions/{id}/fork",
    ] {
        let ok = statuses.iter().any(|((r, s), _)| r == route && *s < 300);
        let bad = statuses.iter().any(|((r, s), _)| r == route && *s >= 400);
        assert!(ok && bad, "{route}: {statuses:?}");
    }
    assert_eq!(http.get("/health").unwrap().status, 200);
    server.shutdown().unwrap();
}
