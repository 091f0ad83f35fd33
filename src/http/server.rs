//! The accept loop (F-30): HTTP/1.1 through hyper with a timer, so a client
//! that sends half a header, or holds a keep-alive connection idle, is closed
//! after `ORCH_HTTP_HEADER_TIMEOUT_MS`; at most `ORCH_HTTP_MAX_CONNECTIONS`
//! connections are open at once (one more is answered a bare 503 and
//! closed, never queued behind the others); on stop no new connection is
//! accepted and those open finish their request (the caller bounds the
//! wait). `axum::serve` has neither timeout nor cap.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What a connection may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Header read, and idle between keep-alive requests (hyper starts the
    /// same timer whenever it waits for a request's head).
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Figures of the accept loop, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Refused because `max_connections` were open.
    pub refused: AtomicU64,
    /// Closed by hyper with an error: header timeout, malformed request,
    /// reset by the peer.
    pub errored: AtomicU64,
}

/// The answer to a connection past the cap: written without reading the
/// request, then the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 37\r\nconnection: close\r\n\r\n{\"error\":\"too many open connections\"}";

/// How long the 503 of a refused connection may take to write.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serve `router` on `listener` until `stop` resolves; then stop accepting
/// and wait for the open connections to finish (hyper closes idle ones at
/// once and those mid-request after their answer).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of
                    // spinning on the error.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    refused,
                    max = limits.max_connections,
                    "connection refused: ORCH_HTTP_MAX_CONNECTIONS are open"
                );
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                stats.errored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_says_its_length() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
