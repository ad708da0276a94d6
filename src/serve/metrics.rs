//! What `GET /metrics` reports, in the Prometheus text exposition format
//! (version 0.0.4), kept with atomics and two small locked maps rather than
//! a metrics crate: request counts by route and status, latency histograms
//! by route, queue wait, worker rounds, tokens and records scored, queue
//! depth, sessions and their evictions.
//!
//! Routes are labelled by their template (`/v1/sessions/{id}/steps`), never
//! by the concrete path, so session ids do not explode the label set.
//! Prefix-cache figures (lookups, hit and computed tokens, evictions) come
//! from the backend after every round (omitted for a backend without a
//! cache rather than faked).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket, then one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The server's counters. Shared by the HTTP side and the worker thread.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// (method, route, status) → count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (method, route) → latency.
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    queue_wait: Mutex<Histogram>,
    pub queue_capacity: usize,
    /// Jobs waiting in the queue (not the round being scored).
    pub queue_depth: AtomicUsize,
    pub rounds: AtomicU64,
    pub round_jobs: AtomicU64,
    pub records_scored: AtomicU64,
    pub tokens_scored: AtomicU64,
    /// Jobs dropped because their request had timed out or gone away.
    pub jobs_abandoned: AtomicU64,
    pub worker_busy_ns: AtomicU64,
    pub sessions_evicted: AtomicU64,
    /// Connections being served, their cap, those refused past the cap
    /// (`503`), and those closed for a request head slower than the read
    /// timeout.
    pub connections_open: AtomicUsize,
    pub max_connections: AtomicUsize,
    pub connections_refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    /// The backend's prefix-cache counters after the latest round.
    pub cache: Mutex<Option<crate::kv::CacheStats>>,
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Metrics {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            latency: Mutex::default(),
            queue_wait: Mutex::default(),
            queue_capacity,
            queue_depth: AtomicUsize::new(0),
            rounds: AtomicU64::new(0),
            round_jobs: AtomicU64::new(0),
            records_scored: AtomicU64::new(0),
            tokens_scored: AtomicU64::new(0),
            jobs_abandoned: AtomicU64::new(0),
            worker_busy_ns: AtomicU64::new(0),
            sessions_evicted: AtomicU64::new(0),
            connections_open: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            cache: Mutex::default(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// One answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            m.entry((method.to_string(), route.to_string()))
                .or_default()
                .observe(elapsed.as_secs_f64());
        }
    }

    /// How long a job waited in the queue before the worker took it.
    pub fn queue_wait(&self, waited: Duration) {
        if let Ok(mut h) = self.queue_wait.lock() {
            h.observe(waited.as_secs_f64());
        }
    }

    /// Requests counted so far with this status (all routes).
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.requests.lock().map_or(0, |m| {
            m.iter()
                .filter(|((_, _, s), _)| *s == status)
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// The exposition text; `sessions_active` is read by the caller from the
    /// session store.
    pub fn render(&self, sessions_active: usize) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: f64| {
            sample(out, "counter", name, help, v)
        };
        let gauge =
            |out: &mut String, name: &str, help: &str, v: f64| sample(out, "gauge", name, help, v);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;

        let _ = writeln!(
            out,
            "# HELP padv_requests_total HTTP requests answered, by route and status.\n\
             # TYPE padv_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "padv_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP padv_request_duration_seconds Time from request to response, by route.\n\
             # TYPE padv_request_duration_seconds histogram"
        );
        if let Ok(m) = self.latency.lock() {
            for ((method, route), h) in m.iter() {
                h.write(
                    &mut out,
                    "padv_request_duration_seconds",
                    &format!("method=\"{method}\",route=\"{route}\""),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP padv_queue_wait_seconds Time a job waited in the queue for the worker.\n\
             # TYPE padv_queue_wait_seconds histogram"
        );
        if let Ok(h) = self.queue_wait.lock() {
            h.write(&mut out, "padv_queue_wait_seconds", "");
        }
        gauge(
            &mut out,
            "padv_queue_depth",
            "Jobs waiting for the worker.",
            self.queue_depth.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "padv_queue_capacity",
            "Jobs the queue holds before answering 429.",
            self.queue_capacity as f64,
        );
        counter(
            &mut out,
            "padv_worker_rounds_total",
            "Worker rounds (queued jobs scored together).",
            load(&self.rounds),
        );
        counter(
            &mut out,
            "padv_worker_round_jobs_total",
            "Jobs scored, summed over rounds (divide by rounds for the batch size).",
            load(&self.round_jobs),
        );
        counter(
            &mut out,
            "padv_worker_busy_seconds_total",
            "Time the worker spent scoring.",
            load(&self.worker_busy_ns) / 1e9,
        );
        counter(
            &mut out,
            "padv_records_scored_total",
            "Records (trajectories, session states, candidates) scored.",
            load(&self.records_scored),
        );
        counter(
            &mut out,
            "padv_tokens_scored_total",
            "Tokens run through the policy/reference pair.",
            load(&self.tokens_scored),
        );
        counter(
            &mut out,
            "padv_jobs_abandoned_total",
            "Queued jobs dropped because their request timed out or went away.",
            load(&self.jobs_abandoned),
        );
        gauge(
            &mut out,
            "padv_sessions_active",
            "Open sessions.",
            sessions_active as f64,
        );
        counter(
            &mut out,
            "padv_session_evictions_total",
            "Sessions closed for being idle longer than the TTL.",
            load(&self.sessions_evicted),
        );
        gauge(
            &mut out,
            "padv_connections_open",
            "Connections being served.",
            self.connections_open.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "padv_connections_max",
            "Connections served at once before answering 503.",
            self.max_connections.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "padv_connections_refused_total",
            "Connections answered 503 because --max-connections were open.",
            load(&self.connections_refused),
        );
        counter(
            &mut out,
            "padv_header_timeouts_total",
            "Connections closed because a request head took longer than --read-timeout.",
            load(&self.header_timeouts),
        );
        let cache = self.cache.lock().map(|c| *c).unwrap_or(None);
        if let Some(c) = cache {
            for (name, help, v) in [
                (
                    "padv_cache_lookups_total",
                    "Sequences looked up in the prefix cache.",
                    c.lookups,
                ),
                (
                    "padv_cache_hit_tokens_total",
                    "Tokens whose K/V (both models) came from the prefix cache.",
                    c.hit_tokens,
                ),
                (
                    "padv_cache_computed_tokens_total",
                    "Tokens run through the forward of both models.",
                    c.computed_tokens,
                ),
                (
                    "padv_cache_evictions_total",
                    "Prefix-cache blocks evicted to make room.",
                    c.evictions,
                ),
            ] {
                counter(&mut out, name, help, v as f64);
            }
            gauge(
                &mut out,
                "padv_cache_blocks",
                "Blocks holding cached prefixes.",
                c.blocks_cached as f64,
            );
        }
        gauge(
            &mut out,
            "padv_uptime_seconds",
            "Seconds since the server started.",
            self.uptime().as_secs_f64(),
        );
        out
    }
}

/// One `# HELP`/`# TYPE` block with a single unlabelled sample.
fn sample(out: &mut String, kind: &str, name: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labelled_by_route() {
        let m = Metrics::new(8);
        m.request("POST", "/v1/score", 200, Duration::from_millis(3));
        m.request("POST", "/v1/score", 200, Duration::from_millis(30));
        m.request("POST", "/v1/score", 429, Duration::from_micros(100));
        m.worker_busy_ns.store(1_500_000_000, Ordering::Relaxed);
        let text = m.render(2);
        assert!(
            text.contains(
                "padv_requests_total{method=\"POST\",route=\"/v1/score\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "padv_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/score\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "padv_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/score\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("padv_sessions_active 2\n"));
        assert!(text.contains("padv_queue_capacity 8\n"));
        assert!(text.contains("padv_worker_busy_seconds_total 1.5\n"));
        assert_eq!(m.requests_with_status(429), 1);
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
