//! The service answers what the CLI writes: `POST /v1/score` equals
//! `padv score` with the same options, and a trajectory replayed step by
//! step through the session endpoints (several at once, so their steps may
//! share a worker round; tests/serve_batching.rs makes sure they do) gets the
//! same step scores as `padv score` on the whole trajectory.

mod cli_common;
mod serve_common;

use cli_common::{padv, succeed};

use serde_json::{Value, json};

use serve_common::{assert_close, checked, client, demo_records, start};

/// Batches of different composition may differ in the last float bits.
const TOL: f64 = 2e-5;

/// `padv score` on `records` (written to a temp JSONL) with `args`.
fn padv_score(records: &[Value], args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = succeed(
        padv()
            .args(["score", "--output", "-", "--on-error", "skip", "--input"])
            .arg(&input)
            .args(args),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mixed_records() -> Vec<Value> {
    let mut records = demo_records(5);
    records.push(json!({"id": "text-1", "text": "go north . take key ."}));
    records.push(
        json!({"id": "ids-1", "token_ids": [1, 20, 21, 22, 23, 24], "action_spans": [[2, 4]]}),
    );
    records.push(json!({"id": "bad-1", "token_ids": [1, 999]}));
    records
}

#[test]
fn score_endpoint_equals_padv_score_with_the_same_options() {
    let server = start(|_| {});
    let mut http = client(&server);
    let records = mixed_records();
    let cases: [(Value, &[&str]); 3] = [
        (json!({}), &[]),
        (
            json!({"token_agg": "mean", "step_agg": "bottom10", "beta": 0.5}),
            &[
                "--token-agg",
                "mean",
                "--step-agg",
                "bottom10",
                "--beta",
                "0.5",
            ],
        ),
        (
            json!({"render": "plain", "tokens": true, "step_agg": "min"}),
            &["--render", "plain", "--tokens", "--step-agg", "min"],
        ),
    ];
    for (options, args) in cases {
        let want = padv_score(&records, args);
        let mut body = options.clone();
        body["trajectories"] = json!(records);
        let r = http.post_json("/v1/score", &body).unwrap();
        let got = checked(&r, "POST", "/v1/score")["results"].clone();
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (w, g) in want.iter().zip(got) {
            if w.get("error").is_some() {
                // Same failure; the location differs (file line vs request index).
                assert_eq!(w["id"], g["id"]);
                assert!(
                    g["error"]
                        .as_str()
                        .unwrap()
                        .contains("out of the vocabulary")
                );
                continue;
            }
            assert_close(w, g, TOL, &format!("{options} {}", w["id"]));
        }
    }
    server.shutdown().unwrap();
}

/// Replay one trajectory through a session: the context, then each
/// (observation, action) pair. Returns every step and the final score.
fn replay(addr: std::net::SocketAddr, traj: &Value) -> (Vec<Value>, Value, Vec<Value>) {
    let mut http = padv::serve::client::Client::new(addr);
    let msgs = traj["messages"].as_array().unwrap();
    let opened = http
        .post_json("/v1/sessions", &json!({"messages": [msgs[0]]}))
        .unwrap();
    let id = checked(&opened, "POST", "/v1/sessions")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/sessions/{id}/steps");
    let (mut steps, mut score, mut candidates) = (Vec::new(), Value::Null, Vec::new());
    let mut i = 1;
    while i < msgs.len() {
        let (obs, act) = (&msgs[i], msgs.get(i + 1));
        let Some(act) = act else {
            let r = http.post_json(&path, &json!({"messages": [obs]})).unwrap();
            score = checked(&r, "POST", "/v1/sessions/{id}/steps")["score"].clone();
            break;
        };
        if i == 3 {
            // Before committing step 1, compare it with an alternative.
            let r = http
                .post_json(
                    &path,
                    &json!({"observation": obs, "candidates": [act, "wait"]}),
                )
                .unwrap();
            let c = checked(&r, "POST", "/v1/sessions/{id}/steps");
            candidates = c["candidates"].as_array().unwrap().clone();
        }
        let r = http
            .post_json(&path, &json!({"observation": obs, "action": act}))
            .unwrap();
        let s = checked(&r, "POST", "/v1/sessions/{id}/steps");
        steps.extend(s["steps"].as_array().unwrap().iter().cloned());
        score = s["score"].clone();
        i += 2;
    }
    assert_eq!(
        http.delete(&format!("/v1/sessions/{id}")).unwrap().status,
        204
    );
    (steps, score, candidates)
}

#[test]
fn session_steps_equal_padv_score_on_the_same_trajectories() {
    let server = start(|_| {});
    let trajectories = demo_records(4);
    let want = padv_score(&trajectories, &[]);
    let addr = server.addr();
    let replays: Vec<_> = trajectories
        .iter()
        .cloned()
        .map(|t| std::thread::spawn(move || replay(addr, &t)))
        .collect();
    for (handle, w) in replays.into_iter().zip(&want) {
        let (steps, score, candidates) = handle.join().unwrap();
        let id = &w["id"];
        assert_close(&w["steps"], &json!(steps), TOL, &format!("{id} steps"));
        assert_close(&w["score"], &score, TOL, &format!("{id} score"));
        let mut real = candidates[0].clone();
        real.as_object_mut().unwrap().remove("candidate");
        assert_close(&w["steps"][1], &real, TOL, &format!("{id} candidate"));
        assert_eq!(candidates[1]["step"], 1);
    }
    server.shutdown().unwrap();
}
