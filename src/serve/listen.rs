//! Accepting connections: HTTP/1.1 through hyper, with a header read
//! timeout, a cap on open connections and graceful shutdown.
//!
//! - **Header timeout.** hyper's `header_read_timeout` (driven by tokio's
//!   timer) closes a connection whose request head has not fully arrived
//!   within `read_timeout`, counted from when the server starts waiting for
//!   it: a new connection, or a kept-alive one after its previous answer. So
//!   an idle or half-sent connection lives at most `read_timeout`.
//! - **Body timeout and size** are the router's (`routes::read_body`): the
//!   body has `read_timeout` to arrive once the head has, and a
//!   `Content-Length` over the limit is answered 413 before any is read.
//! - **Connection cap.** A semaphore of `max_connections` permits; a
//!   connection past it is answered `503` with `Retry-After: 1` straight
//!   from the accept loop (one non-blocking write, no task, nothing read)
//!   and closed, so a flood of connections costs nothing but the accepts.
//! - **Graceful shutdown.** hyper-util's `GracefulShutdown`: on the signal
//!   the listener is dropped, idle connections close, and requests in
//!   flight are answered before [`serve`] returns.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::metrics::Metrics;

/// What bounds the connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time for a request head to arrive (and, in the router, its body).
    pub read_timeout: Duration,
    /// Connections open at once; past it, `503`.
    pub max_connections: usize,
}

/// Serve `router` on `listener` until `shutdown` resolves, then answer what
/// is in flight and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: let it pass, as
                // axum::serve does, without spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            refuse(&stream, limits.max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await
                && e.is_timeout()
            {
                metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Tell a connection past the cap to come back later, and close it. One
/// non-blocking write of a fixed answer: a fresh socket's send buffer takes
/// it whole, and nothing waits on a client that does not read.
fn refuse(stream: &TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"the server has {max} connections open, its limit (--max-connections); retry later\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Take what the client already sent, so that closing sends FIN, not a
    // reset that could overtake the answer.
    let _ = stream.try_read(&mut [0u8; 4096]);
    let _ = stream.try_write(answer.as_bytes());
}
