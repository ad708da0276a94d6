//! `padv serve` as a process: it reports where it listens, and on SIGTERM
//! stops accepting, answers the request it is scoring, and exits cleanly.

mod serve_common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use padv::serve::client::Client;
use serde_json::json;

use serve_common::{demo_records, wait_for};

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_cleanly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_padv"))
        .args(["serve", "--addr", "127.0.0.1:0", "--session-ttl", "5m"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited early: {log}"
        );
        log.push_str(&line);
        if let Some(a) = line.trim().strip_prefix("padv serve: listening on http://") {
            break a.parse().unwrap();
        }
    };
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        for line in stderr.lines() {
            s.push_str(&line.unwrap());
            s.push('\n');
        }
        s
    });

    let in_flight = std::thread::spawn(move || {
        Client::new(addr)
            .post_json("/v1/score", &json!({"trajectories": demo_records(128)}))
            .unwrap()
    });
    // Wait until the worker is scoring it.
    assert!(wait_for(Duration::from_secs(60), || {
        Client::new(addr)
            .get("/metrics")
            .is_ok_and(|m| m.text().contains("padv_worker_rounds_total 1"))
    }));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let resp = in_flight.join().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json().unwrap()["results"].as_array().unwrap().len(),
        128
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = rest.join().unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        Client::new(addr).get("/health").is_err(),
        "nothing listens after exit"
    );
}
