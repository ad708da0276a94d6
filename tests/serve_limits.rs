//! `padv serve` against clients that send slowly, half, or too much, over raw
//! TCP: a request's header and body each have `read_timeout` to arrive, a
//! `Content-Length` over the limit is answered 413 before any of the body is
//! sent, and open connections are capped. Every wait here is bounded (a few
//! seconds), so a server that never cuts a client off fails instead of
//! hanging the suite.

mod serve_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use serve_common::{checked, client, start};

/// Longer than any timeout configured here: past it, the server has failed
/// to cut the client off.
const PATIENCE: Duration = Duration::from_secs(8);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Everything the server sends until it closes the connection, and how long
/// that took; `None` when it kept the connection open past [`PATIENCE`].
fn read_until_closed(s: &mut TcpStream, since: Instant) -> Option<(String, Duration)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // A reset after the answer also closes it.
            Err(_) => break,
        }
    }
    Some((String::from_utf8_lossy(&got).into_owned(), since.elapsed()))
}

/// Send `bytes` one at a time, `gap` apart, until the server stops taking
/// them or `PATIENCE` has passed.
fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration) {
    let start = Instant::now();
    for b in bytes.iter().cycle() {
        if start.elapsed() > PATIENCE || s.write_all(&[*b]).is_err() {
            return;
        }
        std::thread::sleep(gap);
    }
}

#[test]
fn a_header_sent_slowly_is_cut_off_after_the_read_timeout() {
    let server = start(|c| c.read_timeout = Duration::from_secs(1));
    let addr = server.addr();
    let mut s = connect(addr);
    let t0 = Instant::now();
    s.write_all(b"POST /v1/score HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    // A header line that never ends, a byte every 100 ms.
    let mut w = s.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        trickle(&mut w, b"x-slow: aaaaaaaa", Duration::from_millis(100))
    });
    let closed = read_until_closed(&mut s, t0);
    let (_, took) = closed.expect("the server kept a slow header open past 8 s");
    assert!(
        took >= Duration::from_millis(900),
        "cut off too early: {took:?}"
    );
    drip.join().unwrap();
    // The server goes on.
    let r = client(&server).get("/health").unwrap();
    assert_eq!(r.status, 200);
    server.shutdown().unwrap();
}

#[test]
fn a_body_sent_slowly_or_not_at_all_is_answered_408_and_closed() {
    let server = start(|c| c.read_timeout = Duration::from_secs(1));
    let addr = server.addr();
    // Half a body, then nothing.
    let mut s = connect(addr);
    let t0 = Instant::now();
    s.write_all(b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"trajectories\": [")
        .unwrap();
    let (answer, _) =
        read_until_closed(&mut s, t0).expect("a half-sent body was kept open past 8 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request body"), "{answer}");
    // A body that keeps coming, a byte every 100 ms: the read timeout bounds
    // the whole body, not the gap between bytes.
    let mut s = connect(addr);
    let t0 = Instant::now();
    s.write_all(b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let drip = std::thread::spawn(move || trickle(&mut w, b" ", Duration::from_millis(100)));
    let (answer, took) =
        read_until_closed(&mut s, t0).expect("a dripping body was kept open past 8 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    drip.join().unwrap();
    assert!(server.metrics().requests_with_status(408) >= 2);
    let r = client(&server).get("/health").unwrap();
    assert_eq!(r.status, 200);
    server.shutdown().unwrap();
}

#[test]
fn a_content_length_over_the_limit_is_413_before_the_body_is_sent() {
    let server = start(|c| {
        c.max_request_bytes = 1 << 20;
        c.read_timeout = Duration::from_secs(5);
    });
    let mut s = connect(server.addr());
    let t0 = Instant::now();
    // 10 MB announced, none of it sent.
    s.write_all(b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n")
        .unwrap();
    let (answer, took) = read_until_closed(&mut s, t0).expect("no answer within 8 s");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("1048576 bytes"), "{answer}");
    // Well before the read timeout: it did not wait for the body.
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Through the client too, with the JSON error of the schema.
    let mut s = connect(server.addr());
    s.write_all(b"POST /v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n")
        .unwrap();
    let (answer, _) = read_until_closed(&mut s, Instant::now()).expect("no answer within 8 s");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let e: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(e["error"].as_str().unwrap().contains("limit"), "{e}");
    server.shutdown().unwrap();
}

#[test]
fn half_open_connections_are_capped_and_closed_after_the_read_timeout() {
    let cap = 16;
    let server = start(|c| {
        c.read_timeout = Duration::from_secs(1);
        c.max_connections = cap;
    });
    let addr = server.addr();
    // 300 connections that send half a request line and then nothing.
    let t0 = Instant::now();
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"GET /heal").unwrap();
            s
        })
        .collect();
    // Past the cap, new connections are told so at once.
    let mut extra = connect(addr);
    extra
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (answer, _) = read_until_closed(&mut extra, Instant::now()).expect("no answer within 8 s");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Its time is not asserted (a loaded machine): a 503, not a 200 after
    // the idle ones time out, shows it was refused without waiting for a slot.
    // Every one of them is closed by the server within the read timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            read_until_closed(s, t0).is_some(),
            "half-open connection {i} was still open after 8 s"
        );
    }
    // Then the server serves as before, and counted what it refused. Each
    // of the 301 was either refused or taken and then closed by the header
    // timeout (on a loaded machine early ones may time out before the last
    // connect, freeing slots: the split depends on timing, the sum does
    // not). A connection's timeout is counted just after its socket closes,
    // so the counters are read until they add up (8 s at most).
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    let counted = |text: &str| {
        let refused = metric(text, "padv_connections_refused_total ");
        let timed_out = metric(text, "padv_header_timeouts_total ");
        (refused, timed_out)
    };
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let r = client(&server).get("/metrics").unwrap();
        assert_eq!(r.status, 200);
        let text = r.text();
        let (refused, timed_out) = counted(&text);
        if refused + timed_out >= 301.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let value = |name: &str| metric(&text, name);
    let (refused, timed_out) = counted(&text);
    assert!(refused >= 1.0, "{refused}");
    assert!(timed_out >= cap as f64, "{timed_out}");
    assert_eq!(refused + timed_out, 301.0, "{refused} + {timed_out}");
    assert!(value("padv_connections_max ") == cap as f64);
    assert!(value("padv_connections_open ") <= cap as f64);
    let r = client(&server)
        .post_json(
            "/v1/score",
            &json!({"trajectories": [{"text": "go north"}]}),
        )
        .unwrap();
    checked(&r, "POST", "/v1/score");
    assert_eq!(r.status, 200);
    server.shutdown().unwrap();
}
