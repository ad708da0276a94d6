//! What `padv serve` tells and whom: `/v1/models` names the checkpoints
//! without their paths on the server, `--api-key` guards every route but
//! `/health`, and requests that would do nothing (an action sent as a user
//! message, a fork with a body) are refused with the reason.

mod serve_common;

use serde_json::json;

use padv::serve::client::Client;
use serve_common::{checked, client, start, toyworld};

/// A new empty session's id.
fn open_session(http: &mut Client) -> String {
    let open = http
        .post_json("/v1/sessions", &json!({"messages": []}))
        .unwrap();
    assert_eq!(open.status, 201, "{}", open.text());
    open.json().unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn models_are_named_not_located() {
    let server = start(|_| {});
    let mut http = client(&server);
    let r = http.get("/v1/models").unwrap();
    let m = checked(&r, "GET", "/v1/models");
    assert_eq!(m["policy"]["name"], "trained", "{m}");
    assert_eq!(m["reference"]["name"], "ref", "{m}");
    let text = r.text();
    let dir = toyworld().display().to_string();
    assert!(
        !text.contains(&dir),
        "the answer gives a server path: {text}"
    );
    assert!(!text.contains("\"path\""), "{text}");
    server.shutdown().unwrap();
}

#[test]
fn with_an_api_key_every_route_but_health_needs_it() {
    let key = "s3cret-key";
    let server = start(|c| c.api_key = Some(key.into()));
    let addr = server.addr();
    let mut anonymous = client(&server);
    let mut wrong = Client::new(addr).with_api_key("s3cret-kez");
    let mut right = Client::new(addr).with_api_key(key);

    let h = anonymous.get("/health").unwrap();
    assert_eq!(h.status, 200, "health stays open for probes");

    let routes: [(&str, &str, &str); 9] = [
        ("GET", "/metrics", "/metrics"),
        ("GET", "/openapi.json", "/openapi.json"),
        ("GET", "/v1/models", "/v1/models"),
        ("POST", "/v1/score", "/v1/score"),
        ("POST", "/v1/sessions", "/v1/sessions"),
        ("GET", "/v1/sessions/s-1", "/v1/sessions/{id}"),
        ("DELETE", "/v1/sessions/s-1", "/v1/sessions/{id}"),
        ("POST", "/v1/sessions/s-1/steps", "/v1/sessions/{id}/steps"),
        ("POST", "/v1/sessions/s-1/fork", "/v1/sessions/{id}/fork"),
    ];
    for (method, path, route) in routes {
        let body = (method == "POST").then_some(&b"{}"[..]);
        for (who, http) in [("no key", &mut anonymous), ("a wrong key", &mut wrong)] {
            let r = http.request(method, path, body).unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {who}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            if route != "/metrics" && route != "/openapi.json" {
                checked(&r, method, route);
            }
        }
        let r = right.request(method, path, body).unwrap();
        assert_ne!(r.status, 401, "{method} {path} with the key: {}", r.text());
    }
    // The key opens a whole session's life.
    let id = open_session(&mut right);
    let step = right
        .post_json(
            &format!("/v1/sessions/{id}/steps"),
            &json!({"observation": "start .", "action": "go north"}),
        )
        .unwrap();
    assert_eq!(step.status, 200, "{}", step.text());
    // ... and without it, a known session id is not enough.
    let r = anonymous.get(&format!("/v1/sessions/{id}")).unwrap();
    assert_eq!(r.status, 401);
    server.shutdown().unwrap();
}

#[test]
fn an_action_that_is_not_an_assistant_message_is_400_with_the_reason() {
    let server = start(|_| {});
    let mut http = client(&server);
    let id = open_session(&mut http);
    let steps = format!("/v1/sessions/{id}/steps");
    for (body, field) in [
        (
            json!({"observation": "start .", "action": {"role": "user", "content": "go north"}}),
            "action.role",
        ),
        (
            json!({"action": {"role": "tool", "content": "x"}}),
            "action.role",
        ),
    ] {
        let r = http.post_json(&steps, &body).unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = checked(&r, "POST", "/v1/sessions/{id}/steps");
        assert_eq!(e["field"], field);
        assert!(e["error"].as_str().unwrap().contains("`assistant`"), "{e}");
    }
    // The session did not change.
    let s = http.get(&format!("/v1/sessions/{id}")).unwrap();
    assert_eq!(s.json().unwrap()["n_messages"], 0);
    server.shutdown().unwrap();
}

#[test]
fn a_fork_with_a_body_is_400_and_makes_no_session() {
    let server = start(|_| {});
    let mut http = client(&server);
    let id = open_session(&mut http);
    let fork = format!("/v1/sessions/{id}/fork");
    for (body, field) in [
        (
            &br#"{"messages": [{"role": "user", "content": "x"}]}"#[..],
            "messages",
        ),
        (&b"not json"[..], "body"),
        (&b"[]"[..], "body"),
    ] {
        let r = http.post_bytes(&fork, body).unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        let e = checked(&r, "POST", "/v1/sessions/{id}/fork");
        assert_eq!(e["field"], field);
    }
    let h = http.get("/health").unwrap().json().unwrap();
    assert_eq!(h["sessions"], 1, "no fork was made");
    for body in [&b""[..], &b"{}"[..]] {
        let r = http.post_bytes(&fork, body).unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        checked(&r, "POST", "/v1/sessions/{id}/fork");
    }
    server.shutdown().unwrap();
}
