//! `padv serve`: an HTTP service that keeps a policy/reference pair (and the
//! backend's prefix cache) warm and scores trajectories and agent steps as
//! they happen. The endpoints are described in `openapi.json` (served at
//! `/openapi.json`) and in docs/serve.md.
//!
//! Layout, following the data path:
//!
//! - [`api`]: request bodies → typed requests; schema errors name the field.
//! - [`routes`]: the route table and handlers (axum on a small tokio runtime).
//! - [`sessions`]: open sessions with per-session locks and an idle TTL.
//! - [`worker`]: one thread owns the [`Scorer`](crate::Scorer) and scores a
//!   bounded queue in rounds (continuous batching under a token budget).
//! - [`metrics`]: the Prometheus text at `/metrics`.
//! - [`listen`]: the accept loop (hyper): header read timeout, connection
//!   cap, graceful shutdown.
//! - [`client`]: a minimal blocking HTTP/1.1 client (tests, load generator).
//!
//! Embedding: [`Server::start`] serves on a background thread until
//! [`Server::shutdown`]; [`run`] serves in the foreground until SIGINT or
//! SIGTERM. Both shut down gracefully: no new connections, in-flight
//! requests answered, queued work finished, then the worker stops.
//!
//! ```
//! use padv::serve::{ServeConfig, Server, client::Client};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ServeConfig::toyworld()?;
//! config.addr = "127.0.0.1:0".parse()?; // any free port
//! let server = Server::start(config)?;
//! let mut http = Client::new(server.addr());
//! let opened = http.post_json("/v1/sessions", &serde_json::json!({
//!     "messages": [{"role": "system", "content": "get the key , then open the door ."}]
//! }))?;
//! let id = opened.json()?["session_id"].as_str().unwrap_or_default().to_string();
//! let step = http.post_json(&format!("/v1/sessions/{id}/steps"), &serde_json::json!({
//!     "observation": "start . at 1 0 . left 12 . key 1 north . door 1 south . danger none .",
//!     "action": "go north",
//! }))?;
//! assert_eq!(step.status, 200);
//! println!("advantage: {}", step.json()?["steps"][0]["advantage"]);
//! server.shutdown()?;
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod client;
pub mod listen;
pub mod metrics;
pub mod routes;
pub mod sessions;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use self::metrics::Metrics;
use self::routes::AppState;
use self::sessions::SessionStore;
use crate::pipeline::ScorerOptions;
use crate::score::aggregate::TokenAgg;
use crate::{Error, Result};

pub use self::routes::{OPENAPI, ROUTES};

/// Everything `padv serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub policy: PathBuf,
    pub reference: PathBuf,
    /// Each request's defaults (a request may change render, token_agg,
    /// step_agg, beta and tokens); `max_length` and `batch_tokens` are fixed.
    pub options: ScorerOptions,
    pub addr: SocketAddr,
    /// A session unused for this long is closed.
    pub session_ttl: Duration,
    /// Open sessions at most; past it, opening one answers 429.
    pub max_sessions: usize,
    /// Requests waiting for the worker at most; past it, 429.
    pub queue_capacity: usize,
    /// Larger bodies answer 413 (at once when `Content-Length` says so).
    pub max_request_bytes: usize,
    /// A request received in full and not answered within this answers 504
    /// (its work is dropped): queue wait and scoring, not the upload.
    pub request_timeout: Duration,
    /// A request's head must arrive within this (counted from the
    /// connection's start, or from the previous answer on a kept-alive
    /// one), else the connection is closed; its body must then arrive
    /// within this too, else `408` and the connection is closed.
    pub read_timeout: Duration,
    /// Connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// When set, every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
}

impl ServeConfig {
    /// Defaults for serving `policy` against `reference` on 127.0.0.1:8080.
    pub fn new(policy: impl Into<PathBuf>, reference: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            policy: policy.into(),
            reference: reference.into(),
            options: ScorerOptions::default(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            session_ttl: Duration::from_secs(600),
            max_sessions: 10_000,
            queue_capacity: 64,
            max_request_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
            max_connections: 256,
            api_key: None,
        }
    }

    /// The bundled toyworld pair ([`crate::toyworld`]), scored as `padv
    /// score` scores it by default (token aggregation `sum`).
    pub fn toyworld() -> crate::Result<ServeConfig> {
        let (policy, reference) = crate::toyworld::pair()?;
        let mut c = ServeConfig::new(policy, reference);
        c.options.token_agg = TokenAgg::Sum;
        Ok(c)
    }
}

/// A server running on a background thread.
pub struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// Load the pair, bind `config.addr` (port 0 picks a free one) and serve
    /// on a background thread. Returns once the server accepts connections.
    pub fn start(config: ServeConfig) -> Result<Server> {
        let (listener, prepared) = prepare(config)?;
        let addr = local_addr(&listener)?;
        let metrics = prepared.state.metrics.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("padv-serve".into())
            .spawn(move || {
                runtime()?.block_on(prepared.serve(listener, async {
                    let _ = stopped.await;
                }))
            })
            .map_err(|e| Error::Backend(format!("cannot start the server thread: {e}")))?;
        Ok(Server {
            addr,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live counters (what `/metrics` reports).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stop gracefully: answer what is in flight, then return.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Backend("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Serve in the foreground until SIGINT or SIGTERM, then shut down
/// gracefully (what `padv serve` runs). `ready` is called with the bound
/// address once connections are accepted.
pub fn run(config: ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let (listener, prepared) = prepare(config)?;
    ready(local_addr(&listener)?);
    runtime()?.block_on(prepared.serve(listener, shutdown_signal()))
}

/// A loaded worker and the shared state, not yet serving.
struct Prepared {
    state: Arc<AppState>,
    worker: JoinHandle<()>,
    ttl: Duration,
    limits: listen::Limits,
}

fn prepare(config: ServeConfig) -> Result<(std::net::TcpListener, Prepared)> {
    let metrics = Arc::new(Metrics::new(config.queue_capacity.max(1)));
    metrics
        .max_connections
        .store(config.max_connections.max(1), Ordering::Relaxed);
    let w = worker::spawn(
        config.policy.clone(),
        config.reference.clone(),
        config.options.clone(),
        config.queue_capacity,
        metrics.clone(),
    )?;
    let listener = std::net::TcpListener::bind(config.addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::input(config.addr.to_string(), format!("cannot listen: {e}")));
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            w.queue.stop();
            let _ = w.thread.join();
            return Err(e);
        }
    };
    let state = Arc::new(AppState {
        queue: w.queue,
        sessions: SessionStore::new(config.session_ttl, config.max_sessions, metrics.clone()),
        metrics,
        base: config.options,
        models: w.models,
        timeout: config.request_timeout,
        max_request_bytes: config.max_request_bytes,
        read_timeout: config.read_timeout,
        api_key: config.api_key,
    });
    Ok((
        listener,
        Prepared {
            state,
            worker: w.thread,
            ttl: config.session_ttl,
            limits: listen::Limits {
                read_timeout: config.read_timeout,
                max_connections: config.max_connections.max(1),
            },
        },
    ))
}

impl Prepared {
    /// Serve until `shutdown` resolves; then finish in-flight requests and
    /// queued work and stop the worker.
    async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Backend(format!("cannot listen: {e}")))?;
        let sweep_every = (self.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let state = self.state.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tick.tick().await;
                state.sessions.sweep();
            }
        });
        listen::serve(
            listener,
            routes::router(self.state.clone()),
            self.limits,
            self.state.metrics.clone(),
            shutdown,
        )
        .await;
        sweeper.abort();
        // Every handler has answered; let the worker finish and stop.
        let queue = self.state.queue.clone();
        let _ = tokio::task::spawn_blocking(move || queue.stop()).await;
        let joined = tokio::task::spawn_blocking(move || self.worker.join()).await;
        match joined {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::Backend("the scoring worker panicked".into())),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("padv-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Backend(format!("cannot start the async runtime: {e}")))
}

fn local_addr(l: &std::net::TcpListener) -> Result<SocketAddr> {
    l.local_addr()
        .map_err(|e| Error::Backend(format!("cannot read the bound address: {e}")))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("padv serve: shutting down (finishing in-flight requests)");
}

/// `300`, `300s`, `5m`, `1h`, `250ms` → a duration (for `--session-ttl`,
/// `--request-timeout`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 5m, 250ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit `{u}` in `{s}` (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_or_without_a_unit() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
