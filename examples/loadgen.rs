//! Load generator for `padv serve`, on loopback only. Simulated agents replay
//! the toyworld demo trajectories through sessions (open, then per step an
//! optional comparison of candidate actions and the committed action, then
//! close) while a batch client posts `/v1/score`; then a run past capacity
//! (a tiny queue, many clients, no think time) shows 429s while every
//! accepted request completes. Reports throughput and p50/p95/p99 latency
//! per endpoint. Bounded in time and in requests; stops by itself.
//!
//! ```text
//! cargo run --release --example loadgen                  # in-process toyworld server
//! cargo run --release --example loadgen -- --agents 8 --seconds 20
//! cargo run --release --example loadgen -- --agents 1 --batch-clients 0 --no-overload
//! cargo run --release --example loadgen -- --addr 127.0.0.1:8080 --no-overload
//! ```
//!
//! Without `--addr` it starts its own server on a free loopback port (for
//! the overload phase, a second one with `--queue 2`). With `--addr` it
//! drives that server (the address must be a loopback one) and skips the
//! overload phase unless the server's queue is already small.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use padv::serve::client::{Client, Response};
use padv::serve::{ServeConfig, Server};
use serde_json::{Value, json};

struct Args {
    addr: Option<SocketAddr>,
    agents: usize,
    seconds: f64,
    max_requests: usize,
    overload: bool,
    overload_clients: usize,
    candidates_every: usize,
    batch_clients: usize,
    /// Trajectories to replay (default: the bundled toyworld demo).
    demo: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        addr: None,
        agents: 8,
        seconds: 15.0,
        max_requests: 50_000,
        overload: true,
        overload_clients: 32,
        candidates_every: 2,
        batch_clients: 1,
        demo: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = Some(value()?.parse()?),
            "--agents" => a.agents = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--max-requests" => a.max_requests = value()?.parse()?,
            "--overload-clients" => a.overload_clients = value()?.parse()?,
            "--candidates-every" => a.candidates_every = value()?.parse()?,
            "--batch-clients" => a.batch_clients = value()?.parse()?,
            "--no-overload" => a.overload = false,
            "--demo" => a.demo = Some(value()?.into()),
            "-h" | "--help" => {
                println!(
                    "loadgen [--addr 127.0.0.1:PORT] [--agents 8] [--batch-clients 1] [--seconds 15]\n\
                     \x20       [--max-requests 50000] [--overload-clients 32] [--candidates-every 2] [--no-overload]\n\
                     \x20       [--demo TRAJECTORIES.jsonl]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    if let Some(addr) = a.addr
        && !addr.ip().is_loopback()
    {
        bail!("{addr} is not a loopback address; this load generator only drives local servers");
    }
    a.agents = a.agents.clamp(1, 256);
    a.overload_clients = a.overload_clients.clamp(1, 256);
    a.batch_clients = a.batch_clients.min(64);
    a.seconds = a.seconds.clamp(1.0, 600.0);
    Ok(a)
}

/// One answered (or failed) request.
struct Sample {
    endpoint: &'static str,
    status: Option<u16>,
    latency: Duration,
}

/// Shared limits of a phase: a deadline and a request budget.
struct Budget {
    until: Instant,
    left: std::sync::atomic::AtomicIsize,
}

impl Budget {
    fn take(&self) -> bool {
        Instant::now() < self.until
            && self.left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// A client that reports every request it makes.
struct Probe {
    http: Client,
    out: Sender<Sample>,
}

impl Probe {
    fn call(
        &mut self,
        endpoint: &'static str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Option<Response> {
        let bytes = body.map(Value::to_string);
        let start = Instant::now();
        let r = self
            .http
            .request(method, path, bytes.as_deref().map(str::as_bytes));
        let _ = self.out.send(Sample {
            endpoint,
            status: r.as_ref().ok().map(|r| r.status),
            latency: start.elapsed(),
        });
        r.ok()
    }

    /// Call until not refused (429 → wait, as Retry-After says, up to `wait`).
    fn call_retrying(
        &mut self,
        budget: &Budget,
        wait: Duration,
        endpoint: &'static str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Option<Response> {
        loop {
            if !budget.take() {
                return None;
            }
            let r = self.call(endpoint, method, path, body)?;
            if r.status != 429 {
                return Some(r);
            }
            let after = r
                .header("retry-after")
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(wait, |s| Duration::from_secs(s).min(wait));
            std::thread::sleep(after);
        }
    }
}

fn demo(path: Option<&std::path::Path>) -> Result<Vec<Value>> {
    let bundled =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/demo_trained.jsonl");
    let path = path.unwrap_or(&bundled);
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// One simulated agent: replays trajectories through sessions until the budget ends.
fn agent(
    addr: SocketAddr,
    k: usize,
    demo: Arc<Vec<Value>>,
    budget: Arc<Budget>,
    every: usize,
    out: Sender<Sample>,
) {
    let mut p = Probe {
        http: Client::new(addr).with_timeout(Duration::from_secs(120)),
        out,
    };
    let wait = Duration::from_millis(200);
    let mut n = k;
    while Instant::now() < budget.until {
        let msgs = demo[n % demo.len()]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        n += 7;
        let Some(r) = p.call_retrying(
            &budget,
            wait,
            "POST /v1/sessions",
            "POST",
            "/v1/sessions",
            Some(&json!({"messages": [msgs[0]]})),
        ) else {
            return;
        };
        let Some(id) = r
            .json()
            .ok()
            .and_then(|v| v["session_id"].as_str().map(String::from))
        else {
            continue;
        };
        let path = format!("/v1/sessions/{id}/steps");
        for (step, pair) in msgs[1..].chunks(2).enumerate() {
            let [obs, act] = pair else { break };
            if every > 0 && step % every == 1 {
                let body =
                    json!({"observation": obs, "candidates": [act, "wait", "go west", "take key"]});
                if p.call_retrying(
                    &budget,
                    wait,
                    "POST /v1/sessions/{id}/steps (4 candidates)",
                    "POST",
                    &path,
                    Some(&body),
                )
                .is_none()
                {
                    break;
                }
            }
            let body = json!({"observation": obs, "action": act});
            if p.call_retrying(
                &budget,
                wait,
                "POST /v1/sessions/{id}/steps (action)",
                "POST",
                &path,
                Some(&body),
            )
            .is_none()
            {
                break;
            }
        }
        // Close even when the budget ran out mid-trajectory (not counted against it).
        p.call(
            "DELETE /v1/sessions/{id}",
            "DELETE",
            &format!("/v1/sessions/{id}"),
            None,
        );
    }
}

/// Posts batches of whole trajectories to /v1/score until the budget ends.
fn batcher(
    addr: SocketAddr,
    k: usize,
    demo: Arc<Vec<Value>>,
    budget: Arc<Budget>,
    batch: usize,
    wait: Duration,
    out: Sender<Sample>,
) {
    let mut p = Probe {
        http: Client::new(addr).with_timeout(Duration::from_secs(120)),
        out,
    };
    let mut n = k * 31;
    while budget.take() {
        let records: Vec<Value> = (0..batch)
            .map(|i| demo[(n + i) % demo.len()].clone())
            .collect();
        n += batch;
        let r = p.call(
            "POST /v1/score",
            "POST",
            "/v1/score",
            Some(&json!({"trajectories": records})),
        );
        if r.is_some_and(|r| r.status == 429) {
            std::thread::sleep(wait);
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Server-side counters from /metrics.
fn server_counter(addr: SocketAddr, name: &str) -> f64 {
    Client::new(addr)
        .get("/metrics")
        .ok()
        .and_then(|m| {
            m.text().lines().find_map(|l| {
                l.strip_prefix(&format!("{name} "))
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(f64::NAN)
}

/// Run `spawn` (which starts the client threads), collect samples, report.
fn phase(
    title: &str,
    addr: SocketAddr,
    seconds: f64,
    spawn: impl FnOnce(Sender<Sample>),
) -> (usize, usize) {
    let before = [
        "padv_tokens_scored_total",
        "padv_worker_rounds_total",
        "padv_worker_round_jobs_total",
    ]
    .map(|n| server_counter(addr, n));
    let (tx, rx) = channel();
    let start = Instant::now();
    spawn(tx);
    let samples: Vec<Sample> = rx.iter().collect();
    let wall = start.elapsed().as_secs_f64();
    let after = [
        "padv_tokens_scored_total",
        "padv_worker_rounds_total",
        "padv_worker_round_jobs_total",
    ]
    .map(|n| server_counter(addr, n));

    let mut by: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in &samples {
        by.entry(s.endpoint).or_default().push(s);
    }
    println!("\n### {title}\n");
    println!("{seconds:.0} s planned, {wall:.1} s run; server on {addr}\n");
    println!("| endpoint | requests | ok | 429 | failed | ok/s | p50 ms | p95 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut refused, mut failed) = (0, 0);
    for (endpoint, list) in &by {
        let mut ok: Vec<Duration> = list
            .iter()
            .filter(|s| s.status.is_some_and(|c| (200..300).contains(&c)))
            .map(|s| s.latency)
            .collect();
        ok.sort();
        let busy = list.iter().filter(|s| s.status == Some(429)).count();
        let bad = list.len() - ok.len() - busy;
        refused += busy;
        failed += bad;
        println!(
            "| {endpoint} | {} | {} | {busy} | {bad} | {:.1} | {:.1} | {:.1} | {:.1} |",
            list.len(),
            ok.len(),
            ok.len() as f64 / wall,
            percentile(&ok, 0.50),
            percentile(&ok, 0.95),
            percentile(&ok, 0.99),
        );
    }
    let mut busy: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == Some(429))
        .map(|s| s.latency)
        .collect();
    if !busy.is_empty() {
        busy.sort();
        println!(
            "\n429 answered in p50 {:.2} ms, p99 {:.2} ms",
            percentile(&busy, 0.50),
            percentile(&busy, 0.99)
        );
    }
    let tokens = after[0] - before[0];
    let (rounds, jobs) = (after[1] - before[1], after[2] - before[2]);
    println!(
        "\nserver: {:.0} tokens scored ({:.0} tokens/s), {rounds:.0} worker rounds, {:.2} jobs per round",
        tokens,
        tokens / wall,
        jobs / rounds.max(1.0)
    );
    println!("failed (anything but 2xx or 429, or no answer): {failed}");
    (refused, failed)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let demo = Arc::new(demo(args.demo.as_deref())?);
    let start_server = |queue: usize| -> Result<Server> {
        let mut c = ServeConfig::toyworld()?;
        c.addr = "127.0.0.1:0".parse()?;
        c.queue_capacity = queue;
        Ok(Server::start(c)?)
    };
    let own = match args.addr {
        Some(_) => None,
        None => Some(start_server(64)?),
    };
    let addr = args
        .addr
        .or(own.as_ref().map(Server::addr))
        .context("no server")?;
    println!(
        "padv loadgen: {} agents + {} batch clients for {:.0} s (at most {} requests); {} cores here",
        args.agents,
        args.batch_clients,
        args.seconds,
        args.max_requests,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let budget = Arc::new(Budget {
        until: Instant::now() + Duration::from_secs_f64(args.seconds),
        left: (args.max_requests as isize).into(),
    });
    let title = format!(
        "Steady load: {} agents, {} batch clients (4 trajectories a request)",
        args.agents, args.batch_clients
    );
    let (_, failed_steady) = phase(&title, addr, args.seconds, |tx| {
        let mut threads = Vec::new();
        for k in 0..args.agents {
            let (d, b, t) = (demo.clone(), budget.clone(), tx.clone());
            let every = args.candidates_every;
            threads.push(std::thread::spawn(move || agent(addr, k, d, b, every, t)));
        }
        for k in 0..args.batch_clients {
            let (d, b, t) = (demo.clone(), budget.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                batcher(addr, k, d, b, 4, Duration::from_millis(200), t)
            }));
        }
        drop(tx);
        for t in threads {
            let _ = t.join();
        }
    });
    drop(own);

    let mut failed_overload = 0;
    if args.overload && args.addr.is_none() {
        let server = start_server(2)?;
        let addr = server.addr();
        let budget = Arc::new(Budget {
            until: Instant::now() + Duration::from_secs_f64(args.seconds),
            left: (args.max_requests as isize).into(),
        });
        let title = format!(
            "Past capacity: queue of 2, {} clients posting 2 trajectories each with no think time",
            args.overload_clients
        );
        let (refused, failed) = phase(&title, addr, args.seconds, |tx| {
            let mut threads = Vec::new();
            for k in 0..args.overload_clients {
                let (d, b, t) = (demo.clone(), budget.clone(), tx.clone());
                threads.push(std::thread::spawn(move || {
                    batcher(addr, k, d, b, 2, Duration::from_millis(20), t)
                }));
            }
            drop(tx);
            for t in threads {
                let _ = t.join();
            }
        });
        println!("refused with 429: {refused}; accepted but failed: {failed}");
        failed_overload = failed;
        server.shutdown()?;
    }
    if failed_steady + failed_overload > 0 {
        bail!("{} requests failed", failed_steady + failed_overload);
    }
    Ok(())
}
