//! The SQL listener: accepts clients, enforces max-connections with a 1040 error, answers
//! "shutting down" once draining, and hands each admitted client to a session worker.

use super::context::{ActiveGuard, ProxyContext};
use super::error::ClientError;
use super::query_log::{Admit, RateLimiter};
use super::session;
use super::workers::Workers;
use crate::protocol::proxy_protocol;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Accepts until `ctx.force_close` fires; after `ctx.reject_new` every new connection is
/// told the proxy is shutting down instead of being served. Sessions run on `workers`.
pub fn start(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    workers: Arc<Workers>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            info!(addr = %addr, "SQL port listening");
        }
        let rejections = RateLimiter::new(5, Duration::from_secs(1));
        loop {
            let accepted = tokio::select! {
                _ = ctx.force_close.cancelled() => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let m = crate::metrics::get();
            m.create_connection.inc();
            if ctx.reject_new.is_cancelled() {
                m.reject_shutting_down.inc();
                tokio::spawn(session::reject(tcp, ClientError::ShuttingDown));
                continue;
            }
            let max = ctx.settings().max_connections;
            match ctx.admit(max) {
                Some(guard) => hand_over(&workers, tcp, peer, ctx.clone(), guard),
                None => {
                    m.reject_too_many.inc();
                    // A flood must not flood the log too: a few lines a second, then a count.
                    if let Admit::Yes { dropped } = rejections.admit(std::time::Instant::now()) {
                        warn!(client = %peer, max_connections = max, suppressed = dropped, "connection rejected: too many connections");
                    }
                    tokio::spawn(session::reject(
                        tcp,
                        ClientError::TooManyConnections { limit: max },
                    ));
                }
            }
        }
    })
}

/// Moves the socket from this runtime's reactor to a worker's, where the session lives.
fn hand_over(
    workers: &Workers,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<ProxyContext>,
    guard: ActiveGuard,
) {
    let socket = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => {
            warn!(client = %peer, error = %e, "connection dropped: cannot hand it to a worker");
            return;
        }
    };
    // One future per branch, each built around the session's own: an async block holding
    // both would make every idle session pay for the larger.
    if ctx.settings().proxy_protocol_v2 {
        workers.spawn(behind_balancer(socket, peer, ctx, guard));
    } else {
        workers.spawn(session_on_worker(socket, peer, ctx, guard));
    }
}

/// Registers a handed-over socket with the reactor of the worker running this.
fn adopt(socket: std::net::TcpStream, peer: std::net::SocketAddr) -> Option<TcpStream> {
    TcpStream::from_std(socket)
        .inspect_err(
            |e| warn!(client = %peer, error = %e, "connection dropped: a worker cannot poll it"),
        )
        .ok()
}

async fn session_on_worker(
    socket: std::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<ProxyContext>,
    guard: ActiveGuard,
) {
    if let Some(tcp) = adopt(socket, peer) {
        session::run(tcp, peer, ctx, guard).await;
    }
}

/// With `proxy-protocol = "v2"` the session's client is the one the balancer names. A
/// connection without a valid header is closed unanswered: greeting it would let anyone who
/// reaches the port directly pose as any address.
async fn behind_balancer(
    socket: std::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<ProxyContext>,
    guard: ActiveGuard,
) {
    let Some(mut tcp) = adopt(socket, peer) else {
        return;
    };
    let limit = ctx.settings().client_handshake_timeout;
    match proxy_protocol::read_header(&mut tcp, limit).await {
        Ok(h) => {
            let client = h.source.unwrap_or(peer);
            session::run(tcp, client, ctx, guard).await;
        }
        Err(e) => {
            warn!(peer = %peer, error = %e, "connection closed: proxy-protocol is v2 and it sent no valid PROXY protocol v2 header");
            drop(guard);
        }
    }
}
