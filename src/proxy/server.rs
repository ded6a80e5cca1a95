//! The SQL listener: accepts clients, enforces max-connections and max-handshakes-per-source
//! with a 1040 error, answers "shutting down" once draining, takes PROXY headers only from
//! trusted networks, and hands each admitted client to a session worker.

use super::context::{ActiveGuard, ProxyContext};
use super::error::ClientError;
use super::query_log::{Admit, RateLimiter};
use super::session;
use super::workers::Workers;
use crate::protocol::{proxy_protocol, Tcp};
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
                    crate::timer::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let m = &ctx.metrics;
            m.create_connection.inc();
            if ctx.reject_new.is_cancelled() {
                m.reject_shutting_down.inc();
                tokio::spawn(session::reject(tcp, ClientError::ShuttingDown));
                continue;
            }
            let settings = ctx.settings();
            let max = settings.max_connections;
            match ctx.admit(max) {
                Some(mut guard) => {
                    // Behind a balancer every peer is the balancer: the client's own address,
                    // from its PROXY header, is counted instead.
                    let per_source = settings.max_handshakes_per_source;
                    if !settings.proxy_protocol_v2 && !guard.enter_handshake(peer.ip(), per_source)
                    {
                        refuse_source(&ctx, &rejections, peer, per_source);
                        tokio::spawn(session::reject(
                            tcp,
                            ClientError::TooManyHandshakes { limit: per_source },
                        ));
                        continue;
                    }
                    hand_over(&workers, tcp, peer, ctx.clone(), guard)
                }
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

/// Logs a per-source refusal, a few lines a second at most.
fn refuse_source(
    ctx: &ProxyContext,
    rejections: &RateLimiter,
    client: std::net::SocketAddr,
    limit: u64,
) {
    ctx.metrics.reject_too_many.inc();
    if let Admit::Yes { dropped } = rejections.admit(std::time::Instant::now()) {
        warn!(%client, max_handshakes_per_source = limit, suppressed = dropped, "connection rejected: too many connections from this address are still logging in");
    }
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
    // One future per branch: an async block holding both would make every idle session pay
    // for the larger. Without a PROXY header the session's own future is the task, with no
    // wrapper keeping the handed-over socket and the arguments beside it.
    if ctx.settings().proxy_protocol_v2 {
        workers.spawn(behind_balancer(socket, peer, ctx, guard));
    } else {
        workers.spawn(session::run(
            session::ClientSocket::Handed(socket),
            peer,
            ctx,
            guard,
        ));
    }
}

/// Registers a handed-over socket with the reactor of the worker running this.
fn adopt(socket: std::net::TcpStream, peer: std::net::SocketAddr) -> Option<Tcp> {
    Tcp::from_std(socket)
        .inspect_err(
            |e| warn!(client = %peer, error = %e, "connection dropped: a worker cannot poll it"),
        )
        .ok()
}

/// With `proxy-protocol = "v2"` the session's client is the one the balancer names. A
/// connection without a valid header, or from a source outside proxy-protocol-networks, is
/// closed unanswered: greeting it would let anyone who reaches the port directly pose as any
/// address.
async fn behind_balancer(
    socket: std::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<ProxyContext>,
    mut guard: ActiveGuard,
) {
    let Some(mut tcp) = adopt(socket, peer) else {
        return;
    };
    let settings = ctx.settings();
    if !settings.proxy_protocol_networks.trusts(peer.ip()) {
        static UNTRUSTED: std::sync::OnceLock<RateLimiter> = std::sync::OnceLock::new();
        let limiter = UNTRUSTED.get_or_init(|| RateLimiter::new(5, Duration::from_secs(1)));
        if let Admit::Yes { dropped } = limiter.admit(std::time::Instant::now()) {
            warn!(peer = %peer, suppressed = dropped, "connection closed: proxy-protocol is v2 and this source is not in [proxy] proxy-protocol-networks (empty = loopback only), so its PROXY header cannot be trusted");
        }
        return;
    }
    let limit = settings.client_handshake_timeout;
    // Boxed: the header's read is done before the session starts, and inline it would
    // enlarge the future every session of this listener keeps while idle.
    match Box::pin(proxy_protocol::read_header(&mut tcp, limit)).await {
        Ok(h) => {
            let client = h.source.unwrap_or(peer);
            let per_source = settings.max_handshakes_per_source;
            if !guard.enter_handshake(client.ip(), per_source) {
                ctx.metrics.reject_too_many.inc();
                warn!(%client, max_handshakes_per_source = per_source, "connection rejected: too many connections from this address are still logging in");
                session::reject(tcp, ClientError::TooManyHandshakes { limit: per_source }).await;
                return;
            }
            session::run(
                session::ClientSocket::Adopted(Box::new(tcp)),
                client,
                ctx,
                guard,
            )
            .await;
        }
        Err(e) => {
            warn!(peer = %peer, error = %e, "connection closed: proxy-protocol is v2 and it sent no valid PROXY protocol v2 header");
            drop(guard);
        }
    }
}
