//! The worker batches: requests that queue while it is busy share its next
//! round. N compatible requests released together behind a long one are
//! scored in fewer than N rounds, as `GET /metrics` reports them — so a
//! worker that took one job per round would fail here.

mod serve_common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use padv::backend::Device;
use padv::serve::client::{Client, Response};
use serde_json::{Value, json};

use serve_common::{client, demo_records, start, wait_for};

/// The value of an unlabelled sample in the exposition text.
fn sample(metrics: &str, name: &str) -> u64 {
    let line = metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{name}` in\n{metrics}"));
    line.parse::<f64>().unwrap() as u64
}

#[test]
fn requests_queued_together_are_scored_in_fewer_rounds_than_requests() {
    const N: usize = 4;
    const BLOCKER: usize = 128;
    // Without the prefix cache the blocker's ~40k tokens keep the worker busy
    // for seconds here, ample time for N requests to queue.
    let server = start(|c| {
        c.options.device = Device::Cpu;
        c.options.prefix_cache = false;
    });
    let addr = server.addr();
    let post = move |body: Value| {
        std::thread::spawn(move || -> Response {
            Client::new(addr)
                .with_timeout(Duration::from_secs(300))
                .post_json("/v1/score", &body)
                .unwrap()
        })
    };
    let m = server.metrics();
    let blocker = post(json!({ "trajectories": demo_records(BLOCKER) }));
    assert!(wait_for(Duration::from_secs(60), || m.rounds.load(Relaxed) >= 1));

    // N different single-trajectory requests with the server's options.
    let records = demo_records(N);
    let small: Vec<_> = records
        .into_iter()
        .map(|r| post(json!({ "trajectories": [r] })))
        .collect();
    // All N waiting at once: the worker's next round drains them together.
    assert!(
        wait_for(Duration::from_secs(60), || m.queue_depth.load(Relaxed) == N),
        "the {N} requests were never all queued behind the blocker (it ended first?)"
    );
    let blocker = blocker.join().unwrap();
    assert_eq!(blocker.status, 200, "{}", blocker.text());
    for h in small {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json().unwrap()["results"].as_array().unwrap().len(), 1);
    }

    let text = client(&server).get("/metrics").unwrap().text();
    let (rounds, jobs) = (
        sample(&text, "padv_worker_rounds_total"),
        sample(&text, "padv_worker_round_jobs_total"),
    );
    assert_eq!(jobs, 1 + N as u64, "the blocker and the {N} requests");
    assert_eq!(
        sample(&text, "padv_records_scored_total"),
        (BLOCKER + N) as u64
    );
    let after_blocker = rounds - 1;
    assert!(
        after_blocker < N as u64,
        "{N} requests queued together took {after_blocker} rounds"
    );
    server.shutdown().unwrap();
}
