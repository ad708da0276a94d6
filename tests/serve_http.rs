//! `padv serve` over HTTP on a free loopback port: every endpoint, every
//! error path (400, 404, 413, 429, 504), session expiry, and every answer
//! checked against the schemas of `openapi.json`.

mod serve_common;

use std::time::{Duration, Instant};

use padv::backend::Device;
use serde_json::{Value, json};

use serve_common::{checked, client, demo_records, start, wait_for};

#[test]
fn health_models_metrics_and_openapi_describe_the_running_server() {
    let server = start(|_| {});
    let mut http = client(&server);

    let h = checked(&http.get("/health").unwrap(), "GET", "/health");
    assert_eq!(h["status"], "ok");

    let m = checked(&http.get("/v1/models").unwrap(), "GET", "/v1/models");
    assert_eq!(m["policy"]["architecture"], "LlamaForCausalLM");
    assert_eq!(m["reference"]["dtype"], "f32");
    assert!(m["device"].as_str().unwrap().starts_with("cpu"), "{m}");
    assert_eq!(m["defaults"]["token_agg"], "sum", "the toyworld default");

    let served = http.get("/openapi.json").unwrap();
    assert_eq!(served.status, 200);
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json"),
    )
    .unwrap();
    assert_eq!(
        served.text(),
        file,
        "the served description is the repo's file"
    );

    // The file describes exactly the routes the server has.
    let doc = serve_common::openapi();
    let mut described: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(|k| (k.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut served_routes: Vec<(String, String)> = padv::serve::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    described.sort();
    served_routes.sort();
    assert_eq!(described, served_routes);

    let r = http
        .post_json("/v1/score", &json!({"trajectories": demo_records(2)}))
        .unwrap();
    assert_eq!(r.status, 200);
    let metrics = http.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for name in [
        "padv_requests_total{method=\"POST\",route=\"/v1/score\",status=\"200\"} 1",
        "padv_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/score\",le=\"+Inf\"} 1",
        "padv_records_scored_total 2",
        "padv_queue_depth 0",
        "padv_session_evictions_total 0",
        "padv_queue_wait_seconds_count 1",
    ] {
        assert!(text.contains(name), "missing `{name}` in\n{text}");
    }
    let tokens: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("padv_tokens_scored_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens > 100.0, "{tokens}");
    let computed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("padv_cache_computed_tokens_total "))
        .expect("prefix-cache counters are exported")
        .parse()
        .unwrap();
    assert!(
        computed > 0.0 && computed <= tokens,
        "{computed} of {tokens}"
    );
    assert!(text.contains("padv_cache_hit_tokens_total "), "{text}");

    let nope = http.get("/v2/nothing").unwrap();
    assert_eq!(nope.status, 404);
    assert!(
        nope.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("/v2/nothing")
    );
    // A known route asked with another method: a JSON 405, and the `Allow`
    // header naming the methods it takes.
    let wrong = http.delete("/v1/score").unwrap();
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    let msg = wrong.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("DELETE /v1/score") && msg.contains("Allow"),
        "{msg}"
    );
    // A session id that is not UTF-8 once decoded: a JSON 400, not text.
    let bad_id = http.get("/v1/sessions/%FF%FE").unwrap();
    assert_eq!(bad_id.status, 400);
    assert!(
        bad_id.json().unwrap()["error"].is_string(),
        "{}",
        bad_id.text()
    );
    server.shutdown().unwrap();
}

#[test]
fn score_answers_every_record_in_order_with_bad_records_in_place() {
    let server = start(|_| {});
    let mut http = client(&server);
    let mut records = demo_records(3);
    records.insert(1, json!({"id": "broken", "messages": "not a list"}));
    records.push(json!({"id": "plain", "text": "go north . go south"}));
    let r = http
        .post_json("/v1/score", &json!({"trajectories": records}))
        .unwrap();
    let body = checked(&r, "POST", "/v1/score");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["id"], "demo-1000-0");
    assert_eq!(results[1]["id"], "broken");
    assert!(
        results[1]["error"].as_str().unwrap().contains("messages"),
        "{}",
        results[1]
    );
    assert_eq!(results[2]["id"], records[2]["id"]);
    assert!(results[2]["steps"].as_array().unwrap().len() > 2);
    assert_eq!(results[0]["settings"]["token_agg"], "sum");
    assert!(
        results[4]["token_ids"].is_array(),
        "text records get token arrays"
    );

    // Per-request options: the same records, re-aggregated.
    let r = http
        .post_json(
            "/v1/score",
            &json!({"trajectories": demo_records(1), "token_agg": "mean", "step_agg": "min",
                    "beta": 0.5, "tokens": true}),
        )
        .unwrap();
    let one = &checked(&r, "POST", "/v1/score")["results"][0];
    assert_eq!(one["settings"]["token_agg"], "mean");
    assert_eq!(one["settings"]["beta"], 0.5);
    assert!(one["action_mask"].is_array() && one["logp_policy"].is_array());

    let empty = http
        .post_json("/v1/score", &json!({"trajectories": []}))
        .unwrap();
    assert_eq!(checked(&empty, "POST", "/v1/score")["results"], json!([]));
    server.shutdown().unwrap();
}

/// The index of the highest advantage among `candidates`, the earliest of
/// equals (as `openapi.json` documents `best`).
fn argmax(candidates: &[Value]) -> u64 {
    let scored: Vec<(u64, f64)> = candidates
        .iter()
        .filter_map(|c| Some((c["candidate"].as_u64()?, c["advantage"].as_f64()?)))
        .collect();
    let top = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    scored.iter().find(|s| s.1 == top).unwrap().0
}

#[test]
fn sessions_open_step_compare_fork_and_close() {
    let server = start(|_| {});
    let mut http = client(&server);
    let traj = &demo_records(1)[0];
    let msgs = traj["messages"].as_array().unwrap();

    let opened = http
        .post_json("/v1/sessions", &json!({"messages": [msgs[0]]}))
        .unwrap();
    let opened = checked(&opened, "POST", "/v1/sessions");
    let id = opened["session_id"].as_str().unwrap().to_string();
    let steps_path = format!("/v1/sessions/{id}/steps");

    let s = http
        .post_json(
            &steps_path,
            &json!({"observation": msgs[1], "action": msgs[2]}),
        )
        .unwrap();
    let s = checked(&s, "POST", "/v1/sessions/{id}/steps");
    assert_eq!(s["steps"].as_array().unwrap().len(), 1);
    assert_eq!(s["steps"][0]["step"], 0);
    assert_eq!(s["steps"][0]["message"], 2);
    assert_eq!(s["n_messages"], 3);
    assert_eq!(s["score"], s["steps"][0]["advantage"]);

    // Candidates leave the session as it was. The last two repeat the first
    // two, so whichever of those is best is tied by a later one.
    let c = http
        .post_json(
            &steps_path,
            &json!({"observation": msgs[3], "candidates": [
                msgs[4], "wait", {"role": "user", "content": "hi"}, "wait", msgs[4],
            ]}),
        )
        .unwrap();
    let c = checked(&c, "POST", "/v1/sessions/{id}/steps");
    let cands = c["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 5);
    assert_eq!(cands[1]["candidate"], 1);
    assert!(cands[1]["advantage"].is_number());
    assert!(
        cands[2]["error"]
            .as_str()
            .unwrap()
            .contains("not an action"),
        "{}",
        cands[2]
    );
    assert_eq!(cands[3]["advantage"], cands[1]["advantage"], "same action");
    assert_eq!(cands[4]["advantage"], cands[0]["advantage"], "same action");
    assert_ne!(cands[0]["advantage"], cands[1]["advantage"]);
    assert_eq!(c["best"].as_u64(), Some(argmax(cands)), "{c:#}");

    let info = http.get(&format!("/v1/sessions/{id}")).unwrap();
    let info = checked(&info, "GET", "/v1/sessions/{id}");
    assert_eq!(
        info["n_messages"], 3,
        "candidates did not change the session"
    );

    // A fork evolves on its own.
    let f = http
        .post_bytes(&format!("/v1/sessions/{id}/fork"), b"")
        .unwrap();
    let f = checked(&f, "POST", "/v1/sessions/{id}/fork");
    let fid = f["session_id"].as_str().unwrap().to_string();
    assert_ne!(fid, id);
    let s = http
        .post_json(
            &format!("/v1/sessions/{fid}/steps"),
            &json!({"messages": [msgs[3], msgs[4]]}),
        )
        .unwrap();
    let s = checked(&s, "POST", "/v1/sessions/{id}/steps");
    assert_eq!(s["steps"][0]["step"], 1);
    assert!(
        (s["steps"][0]["advantage"].as_f64().unwrap() - cands[0]["advantage"].as_f64().unwrap())
            .abs()
            < 1e-9,
        "the committed action scores as its candidate did"
    );
    let info = http.get(&format!("/v1/sessions/{id}")).unwrap();
    assert_eq!(info.json().unwrap()["n_messages"], 3);

    let d = http.delete(&format!("/v1/sessions/{id}")).unwrap();
    checked(&d, "DELETE", "/v1/sessions/{id}");
    assert_eq!(d.status, 204);
    for (method, path) in [
        ("DELETE", format!("/v1/sessions/{id}")),
        ("GET", format!("/v1/sessions/{id}")),
        ("POST", format!("/v1/sessions/{id}/fork")),
        ("POST", steps_path.clone()),
    ] {
        // A step's body (a fork takes none: a body there is a 400 of its own).
        let body = br#"{"action": "wait"}"#;
        let with_body = method == "POST" && path.ends_with("/steps");
        let r = http
            .request(method, &path, with_body.then_some(&body[..]))
            .unwrap();
        assert_eq!(r.status, 404, "{method} {path}");
        let route = path.replace(&id, "{id}");
        checked(&r, method, &route);
    }
    let other = http.get(&format!("/v1/sessions/{fid}")).unwrap();
    assert_eq!(other.status, 200, "the fork outlives its parent");
    server.shutdown().unwrap();
}

/// Opens an empty session (checked against openapi.json); its id.
fn open_session(http: &mut padv::serve::client::Client) -> String {
    let opened = http.post_json("/v1/sessions", &json!({})).unwrap();
    checked(&opened, "POST", "/v1/sessions")["session_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn malformed_and_invalid_bodies_are_400_and_name_the_field() {
    let server = start(|_| {});
    let mut http = client(&server);
    let id = open_session(&mut http);
    let steps = format!("/v1/sessions/{id}/steps");
    let cases: Vec<(&str, &str, &[u8], &str)> = vec![
        ("/v1/score", "/v1/score", b"{\"trajectories\": [", "body"),
        ("/v1/score", "/v1/score", b"[]", "body"),
        ("/v1/score", "/v1/score", b"{}", "trajectories"),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": {}}",
            "trajectories",
        ),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": [], \"token_agg\": \"median\"}",
            "token_agg",
        ),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": [], \"step_agg\": 3}",
            "step_agg",
        ),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": [], \"beta\": \"high\"}",
            "beta",
        ),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": [], \"render\": \"fancy\"}",
            "render",
        ),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": [], \"tokens\": 1}",
            "tokens",
        ),
        (
            "/v1/score",
            "/v1/score",
            b"{\"trajectories\": [], \"trajectory\": []}",
            "trajectory",
        ),
        (
            "/v1/sessions",
            "/v1/sessions",
            b"{\"messages\": {}}",
            "messages",
        ),
        (
            "/v1/sessions",
            "/v1/sessions",
            b"{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}",
            "messages",
        ),
        ("/v1/sessions", "/v1/sessions", b"{\"tools\": 5}", "tools"),
        (&steps, "/v1/sessions/{id}/steps", b"{}", "action"),
        (
            &steps,
            "/v1/sessions/{id}/steps",
            b"{\"action\": \"a\", \"candidates\": [\"b\"]}",
            "action",
        ),
        (
            &steps,
            "/v1/sessions/{id}/steps",
            b"{\"action\": {\"content\": \"go\"}}",
            "action.role",
        ),
        (
            &steps,
            "/v1/sessions/{id}/steps",
            b"{\"action\": 7}",
            "action",
        ),
        (
            &steps,
            "/v1/sessions/{id}/steps",
            b"{\"candidates\": []}",
            "candidates",
        ),
        (
            &steps,
            "/v1/sessions/{id}/steps",
            b"{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
            "messages",
        ),
        (
            &steps,
            "/v1/sessions/{id}/steps",
            b"{\"action\": \"go\", \"mood\": \"good\"}",
            "mood",
        ),
    ];
    for (path, route, body, field) in cases {
        let r = http.post_bytes(path, body).unwrap();
        assert_eq!(
            r.status,
            400,
            "{path} {}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        let e = checked(&r, "POST", route);
        assert_eq!(e["field"], field, "{}: {e}", String::from_utf8_lossy(body));
        assert!(!e["error"].as_str().unwrap().is_empty());
    }
    // None of that disturbed the session or the server.
    let ok = http
        .post_json(&steps, &json!({"observation": "start .", "action": "wait"}))
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    server.shutdown().unwrap();
}

#[test]
fn bodies_over_the_limit_are_413_and_the_server_goes_on() {
    let server = start(|c| c.max_request_bytes = 4096);
    let mut http = client(&server);
    let big = json!({"trajectories": demo_records(8)});
    assert!(big.to_string().len() > 4096);
    let r = http.post_json("/v1/score", &big).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    checked(&r, "POST", "/v1/score");
    let mut http = client(&server);
    let small = http
        .post_json(
            "/v1/score",
            &json!({"trajectories": [{"text": "go north"}]}),
        )
        .unwrap();
    assert_eq!(small.status, 200);
    server.shutdown().unwrap();
}

#[test]
fn idle_sessions_expire_after_the_ttl_and_count_as_evictions() {
    let ttl = Duration::from_secs(1);
    let server = start(|c| c.session_ttl = ttl);
    let mut http = client(&server);
    let open = |http: &mut padv::serve::client::Client| {
        http.post_json("/v1/sessions", &json!({"messages": []}))
            .unwrap()
            .json()
            .unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (idle, busy) = (open(&mut http), open(&mut http));
    let opened = Instant::now();
    // `busy` is used every 100 ms (it would take a stall of a whole TTL to
    // lose it) until `idle` has certainly been unused for longer than the TTL.
    while opened.elapsed() <= ttl + Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            http.get(&format!("/v1/sessions/{busy}")).unwrap().status,
            200
        );
    }
    let r = http.get(&format!("/v1/sessions/{idle}")).unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert!(wait_for(Duration::from_secs(2), || {
        server
            .metrics()
            .sessions_evicted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    }));
    server.shutdown().unwrap();
}

/// A request big enough to keep the worker busy for a while.
fn blocker(n: usize) -> Value {
    json!({ "trajectories": demo_records(n) })
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_in_flight_requests_complete() {
    use std::sync::atomic::Ordering::Relaxed;
    let server = start(|c| c.queue_capacity = 1);
    let addr = server.addr();
    let post = move |body: Value| {
        std::thread::spawn(move || {
            padv::serve::client::Client::new(addr)
                .post_json("/v1/score", &body)
                .unwrap()
        })
    };
    // A occupies the worker, B waits in the one queue slot, C is refused.
    let a = post(blocker(256));
    let m = server.metrics();
    assert!(wait_for(Duration::from_secs(60), || m.rounds.load(Relaxed) >= 1));
    let b = post(json!({"trajectories": demo_records(1)}));
    assert!(wait_for(Duration::from_secs(10), || m
        .queue_depth
        .load(Relaxed)
        == 1));
    let mut http = client(&server);
    let c = http
        .post_json("/v1/score", &json!({"trajectories": demo_records(1)}))
        .unwrap();
    assert_eq!(c.status, 429, "{}", c.text());
    assert_eq!(c.header("retry-after"), Some("1"));
    checked(&c, "POST", "/v1/score");
    // Sessions are refused too, not failed.
    let opened = http.post_json("/v1/sessions", &json!({})).unwrap();
    let sid = opened.json().unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let step = http
        .post_json(
            &format!("/v1/sessions/{sid}/steps"),
            &json!({"action": "wait"}),
        )
        .unwrap();
    assert_eq!(step.status, 429);
    // The light endpoints still answer at once.
    assert_eq!(http.get("/health").unwrap().status, 200);

    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json().unwrap()["results"].as_array().unwrap().len(), 256);
    assert_eq!(b.status, 200);
    let step = http
        .post_json(
            &format!("/v1/sessions/{sid}/steps"),
            &json!({"action": "wait"}),
        )
        .unwrap();
    assert_eq!(step.status, 200, "the refused step can be retried");
    server.shutdown().unwrap();
}

#[test]
fn a_request_past_the_timeout_answers_504_and_later_requests_are_served() {
    use std::sync::atomic::Ordering::Relaxed;
    // 2048 trajectories without the prefix cache are ~450k tokens through both
    // models: tens of seconds on one core, still seconds on a machine twenty
    // times faster, so the 1 s timeout always passes first; the small request
    // after it takes milliseconds.
    let server = start(|c| {
        c.request_timeout = Duration::from_secs(1);
        c.options.device = Device::Cpu;
        c.options.prefix_cache = false;
    });
    let mut http = client(&server);
    let n = 2048;
    let slow = http.post_json("/v1/score", &blocker(n)).unwrap();
    assert_eq!(slow.status, 504, "{}", slow.text());
    checked(&slow, "POST", "/v1/score");
    let m = server.metrics();
    // The worker drops the abandoned work at its next chunk.
    assert!(wait_for(Duration::from_secs(60), || m
        .jobs_abandoned
        .load(Relaxed)
        >= 1));
    let ok = http
        .post_json("/v1/score", &json!({"trajectories": demo_records(1)}))
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(
        m.records_scored.load(Relaxed) < n as u64,
        "the timed-out request was not scored to its end"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_step_longer_than_the_context_is_422_and_sessions_past_the_limit_are_429() {
    let server = start(|c| c.max_sessions = 1);
    let mut http = client(&server);
    let id = open_session(&mut http);
    let full = http.post_json("/v1/sessions", &json!({})).unwrap();
    assert_eq!(full.status, 429);
    assert!(full.header("retry-after").is_some());
    checked(&full, "POST", "/v1/sessions");
    let fork = http
        .post_bytes(&format!("/v1/sessions/{id}/fork"), b"")
        .unwrap();
    assert_eq!(fork.status, 429);
    checked(&fork, "POST", "/v1/sessions/{id}/fork");

    // The toyworld models have a context of 1024 positions.
    let long = "go north . ".repeat(800);
    let path = format!("/v1/sessions/{id}/steps");
    let r = http.post_json(&path, &json!({"action": long})).unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    let e = checked(&r, "POST", "/v1/sessions/{id}/steps");
    assert!(e["error"].as_str().unwrap().contains("context"), "{e}");
    let info = http.get(&format!("/v1/sessions/{id}")).unwrap();
    assert_eq!(
        info.json().unwrap()["n_messages"],
        0,
        "a failed step is not kept"
    );
    let ok = http.post_json(&path, &json!({"action": "wait"})).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    server.shutdown().unwrap();
}

#[test]
fn a_session_step_whose_tool_call_the_template_drops_says_so() {
    let server = start(|_| {});
    let mut http = client(&server);
    let id = open_session(&mut http);
    let steps = format!("/v1/sessions/{id}/steps");
    // The toyworld template writes no tool calls: the action is scored
    // as a bare end of turn, which the step (and each candidate) says.
    let call = json!({"role": "assistant", "content": "",
                      "tool_calls": [{"function": {"name": "look", "arguments": {}}}]});
    let plain = json!({"role": "assistant", "content": "go north"});
    let r = http
        .post_json(&steps, &json!({"observation": "hi", "action": call}))
        .unwrap();
    let r = checked(&r, "POST", "/v1/sessions/{id}/steps");
    let w = r["steps"][0]["warnings"][0].as_str().unwrap_or_default();
    assert!(w.contains("dropped the tool call `look`"), "{r}");
    let r = http
        .post_json(
            &steps,
            &json!({"observation": "again", "candidates": [plain, call]}),
        )
        .unwrap();
    let r = checked(&r, "POST", "/v1/sessions/{id}/steps");
    assert!(r["candidates"][0].get("warnings").is_none(), "{r}");
    let w = r["candidates"][1]["warnings"][0]
        .as_str()
        .unwrap_or_default();
    assert!(w.contains("dropped the tool call `look`"), "{r}");
    server.shutdown().unwrap();
}
