//! The SQL listener: accepts clients, enforces max-connections and max-handshakes-per-source
//! with a 1040 error, answers "shutting down" once draining, takes PROXY headers only from
//! trusted networks, and starts each admitted client's session on a session worker.

use super::context::{ActiveGuard, ProxyContext};
use super::error::ClientError;
use super::query_log::{Admit, RateLimiter};
use super::session;
use super::workers::Workers;
use crate::protocol::epoll::{EpollListener, Reactor};
use crate::protocol::{proxy_protocol, Tcp};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Accepts until `ctx.force_close` fires; after `ctx.reject_new` every new connection is
/// told the proxy is shutting down instead of being served. Sessions run on `workers`.
///
/// With workers that run their own loops (the `epoll` engine) every worker accepts on the
/// shared listening socket and keeps what it accepts (within a bound on imbalance), so a new
/// session starts on the thread that serves it; otherwise one loop on this runtime accepts
/// and hands each socket to the least-loaded worker. The task returned ends when accepting
/// has stopped and the listening socket is closed.
pub fn start(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    workers: Arc<Workers>,
) -> std::io::Result<JoinHandle<()>> {
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, "SQL port listening");
    }
    if !workers.accept_on_workers() {
        return Ok(tokio::spawn(accept_here(listener, ctx, workers)));
    }
    let listener = Arc::new(listener.into_std()?);
    let rejections = Arc::new(RateLimiter::new(5, Duration::from_secs(1)));
    // Each acceptor holds a sender; the receiver sees the channel close once all have ended.
    let (running, mut ended) = tokio::sync::mpsc::channel::<()>(1);
    for index in 0..workers.len() {
        let acceptor = accept_on_worker(
            index,
            listener.clone(),
            ctx.clone(),
            workers.clone(),
            rejections.clone(),
            running.clone(),
        );
        workers.spawn_uncounted(index, acceptor);
    }
    Ok(tokio::spawn(async move {
        while ended.recv().await.is_some() {}
    }))
}

/// One worker's acceptor. The listening socket closes when the last acceptor drops it.
async fn accept_on_worker(
    index: usize,
    listener: Arc<std::net::TcpListener>,
    ctx: Arc<ProxyContext>,
    workers: Arc<Workers>,
    rejections: Arc<RateLimiter>,
    running: tokio::sync::mpsc::Sender<()>,
) {
    let local_port = listener.local_addr().map_or(0, |a| a.port());
    let incoming = match Reactor::current()
        .ok_or_else(|| std::io::Error::other("not on a session worker"))
        .and_then(|reactor| EpollListener::adopt(listener, reactor))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "this session worker cannot accept SQL connections; the others still do");
            return;
        }
    };
    let stop = ctx.force_close.cancelled();
    tokio::pin!(stop);
    let mut in_a_row = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = incoming.accept() => r,
        };
        match accepted {
            Ok((socket, peer)) => {
                if let Some(admitted) = admit(&ctx, &rejections, socket, peer) {
                    let (socket, guard) = admitted;
                    place(
                        socket,
                        peer,
                        local_port,
                        ctx.clone(),
                        guard,
                        &workers,
                        Some(index),
                    );
                }
            }
            Err(e) => back_off_after(e).await,
        }
        // A stream of new connections must not keep this worker from its sessions.
        in_a_row += 1;
        if in_a_row == ACCEPTS_PER_TURN {
            in_a_row = 0;
            tokio::task::yield_now().await;
        }
    }
    drop(incoming);
    drop(running);
}

/// Logs a failed accept, one line in ten seconds across all acceptors (with the count of
/// those left out), and waits before the next try instead of spinning: out of file
/// descriptors, the connection stays queued until one is freed.
async fn back_off_after(e: std::io::Error) {
    static FAILURES: std::sync::OnceLock<RateLimiter> = std::sync::OnceLock::new();
    let limiter = FAILURES.get_or_init(|| RateLimiter::new(1, Duration::from_secs(10)));
    if let Admit::Yes { dropped } = limiter.admit(std::time::Instant::now()) {
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            warn!(error = %e, suppressed = dropped, "cannot accept SQL connections: the process is out of file descriptors; raise its open-file limit (ulimit -n, LimitNOFILE) or lower [proxy] max-connections; retrying every 50 ms");
        } else {
            warn!(error = %e, suppressed = dropped, "cannot accept a SQL connection; retrying in 50 ms");
        }
    }
    crate::timer::sleep(Duration::from_millis(50)).await;
}

/// Connections accepted before a worker's acceptor lets its sessions run.
const ACCEPTS_PER_TURN: u32 = 16;

/// The accept loop on the control runtime (the `tokio` and `io-uring` engines), handing each
/// admitted socket to the least-loaded worker.
async fn accept_here(listener: TcpListener, ctx: Arc<ProxyContext>, workers: Arc<Workers>) {
    let local_port = listener.local_addr().map_or(0, |a| a.port());
    let rejections = RateLimiter::new(5, Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            _ = ctx.force_close.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                back_off_after(e).await;
                continue;
            }
        };
        let socket = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(client = %peer, error = %e, "connection dropped: cannot hand it to a worker");
                continue;
            }
        };
        if let Some((socket, guard)) = admit(&ctx, &rejections, socket, peer) {
            place(socket, peer, local_port, ctx.clone(), guard, &workers, None);
        }
    }
}

/// Counts a new connection and decides whether it may start a session: the socket and its
/// max-connections guard when it may, `None` after it has been given its refusal.
fn admit(
    ctx: &Arc<ProxyContext>,
    rejections: &RateLimiter,
    socket: std::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<(std::net::TcpStream, ActiveGuard)> {
    let m = &ctx.metrics;
    m.create_connection.inc();
    if ctx.reject_new.is_cancelled() {
        m.reject_shutting_down.inc();
        refuse(socket, peer, ClientError::ShuttingDown);
        return None;
    }
    let settings = ctx.settings();
    let max = settings.max_connections;
    let Some(mut guard) = ctx.admit(max) else {
        m.reject_too_many.inc();
        // A flood must not flood the log too: a few lines a second, then a count.
        if let Admit::Yes { dropped } = rejections.admit(std::time::Instant::now()) {
            warn!(client = %peer, max_connections = max, suppressed = dropped, "connection rejected: too many connections");
        }
        refuse(socket, peer, ClientError::TooManyConnections { limit: max });
        return None;
    };
    // Behind a balancer every peer is the balancer: the client's own address, from its
    // PROXY header, is counted instead.
    let per_source = settings.max_handshakes_per_source;
    if !settings.proxy_protocol_v2 && !guard.enter_handshake(peer.ip(), per_source) {
        refuse_source(ctx, rejections, peer, per_source);
        refuse(
            socket,
            peer,
            ClientError::TooManyHandshakes { limit: per_source },
        );
        return None;
    }
    Some((socket, guard))
}

/// Sends a refused connection its error and closes it, from the control runtime: refusals
/// are rare, and a flood of them must not occupy the session workers.
fn refuse(socket: std::net::TcpStream, peer: std::net::SocketAddr, err: ClientError) {
    let tcp = socket
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(socket));
    match tcp {
        Ok(tcp) => drop(tokio::spawn(session::reject(tcp, err))),
        Err(e) => {
            warn!(client = %peer, error = %e, "connection closed without its error: the socket cannot be polled")
        }
    }
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

/// Starts an admitted connection's session: near worker `accepted_on` when a worker accepted
/// it, on the least-loaded worker otherwise. `local_port` is the listener's.
fn place(
    socket: std::net::TcpStream,
    peer: std::net::SocketAddr,
    local_port: u16,
    ctx: Arc<ProxyContext>,
    guard: ActiveGuard,
    workers: &Workers,
    accepted_on: Option<usize>,
) {
    fn spawn<F>(workers: &Workers, accepted_on: Option<usize>, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match accepted_on {
            Some(index) => workers.spawn_near(index, task),
            None => workers.spawn(task),
        }
    }
    // One future per branch: an async block holding both would make every idle session pay
    // for the larger. Without a PROXY header the session's own future is the task, with no
    // wrapper keeping the handed-over socket and the arguments beside it.
    if ctx.settings().proxy_protocol_v2 {
        spawn(
            workers,
            accepted_on,
            behind_balancer(socket, peer, ctx, guard),
        );
    } else {
        let client = session::ClientSocket::Handed { socket, local_port };
        spawn(workers, accepted_on, session::run(client, peer, ctx, guard));
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
