//! One client session: handshake, backend choice, authentication pass-through, then the
//! command loop that relays each command and its response and tracks the transaction state.

mod command;
mod early;
#[cfg(test)]
mod failover_tests;
mod kept_identity;
mod move_error;
mod namespace;
mod outcome;
mod redirect;
mod reused;
pub(crate) mod stmt_ids;

use super::backend_conn::{dial, relay_auth_bounded, AuthAnswer, AuthOutcome, AuthRelayError};
use super::client_handshake::{accept_client, ClientHandshakeError, ClientHello};
use super::context::{ActiveGuard, ProxyContext};
use super::error::ClientError;
use super::error_source::ErrorSource;
use super::migrate::credential::{Proof, ProofCapture};
use super::migrate::service::Login;
use super::migrate::state::Tracked;
use super::registry::SessionEntry;
use super::txn::TxnState;
use crate::balance::BackendLease;
use crate::metrics::Disconnect;
use crate::protocol::conn::HEADER_LEN;
use crate::protocol::constants::cap;
use crate::protocol::handshake::HandshakeResponse;
use crate::protocol::{PacketConn, Stream, Tcp};
use crate::timer::timeout;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, info, warn};

pub(crate) enum Flow {
    Continue,
    Quit,
}

/// Why a session ended; what the client was told, if anything, was sent already.
#[derive(Debug)]
pub(crate) enum End {
    ClientQuit,
    ClientGone(String),
    /// The client fell silent in the middle of a command for client-read-timeout.
    ClientStalled(String),
    Told(ClientError),
    AuthDenied,
    Shutdown,
}

pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) client: PacketConn,
    pub(crate) backend: PacketConn,
    pub(crate) lease: BackendLease,
    /// Capabilities in force with the backend.
    pub(crate) capabilities: u32,
    pub(crate) collation: u8,
    pub(crate) txn: TxnState,
    pub(crate) entry: Arc<SessionEntry>,
    pub(crate) user: String,
    /// The start of the current COM_QUERY / COM_STMT_PREPARE text, for digests and tracking.
    pub(crate) statement: Vec<u8>,
    /// Digests of prepared statements by id, for errors of COM_STMT_EXECUTE; boxed, as most
    /// sessions prepare nothing and every session holds the field.
    #[allow(clippy::box_collection)]
    pub(crate) prepared: Option<Box<HashMap<u32, Box<str>>>>,
    /// The client's handshake response: who to log in as on another backend.
    pub(crate) identity: kept_identity::KeptIdentity,
    /// Capabilities in force between the client and the proxy.
    pub(crate) client_capabilities: u32,
    /// The client's observed authentication, for re-authentication elsewhere.
    pub(crate) proof: Proof,
    /// How to log in as the session's user elsewhere, once worked out.
    pub(crate) login: Option<Login>,
    /// A failed move makes the session ignore requests until then.
    pub(crate) redirect_retry_at: Option<std::time::Instant>,
    /// State the proxy tracks for rebuilding the session elsewhere.
    pub(crate) tracked: Tracked,
    /// The client's prepared statement ids and the backend's, once a rebuild made them differ.
    pub(crate) stmt_ids: stmt_ids::StmtIds,
    /// When the client connected: queries' age since then is a metric.
    pub(crate) born: std::time::Instant,
}

/// How much statement text is kept for a digest.
pub(crate) const STATEMENT_PREFIX: usize = 1024;

/// A plain function, not an `async fn`: one would keep its arguments and the origin beside the
/// session's future for the session's whole life. With a PROXY-header origin the scoped
/// session is boxed, so the common case carries no room for the scope's value either.
pub fn run(
    socket: ClientSocket,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    guard: ActiveGuard,
) -> impl std::future::Future<Output = ()> + Send {
    use tokio_util::either::Either;
    let origin = if ctx.settings().backend_proxy_header {
        let local = match &socket {
            ClientSocket::Handed { socket, .. } => socket.local_addr(),
            ClientSocket::Adopted(t) => t.local_addr(),
        };
        local.ok().map(|local| (peer, local))
    } else {
        None
    };
    let session = run_session(socket, peer, ctx, guard);
    match origin {
        Some(_) => Either::Left(Box::pin(super::backend_conn::with_client_origin(
            origin, session,
        ))),
        None => Either::Right(session),
    }
}

/// The client's socket as a session gets it.
pub enum ClientSocket {
    /// Handed over by the acceptor: it joins the reactor of the worker running the session
    /// when the session starts there. `local_port` is the listener's (what port-based routing
    /// reads), known without asking the socket.
    Handed {
        socket: std::net::TcpStream,
        local_port: u16,
    },
    /// Already on this worker's reactor (its PROXY header was read there).
    Adopted(Box<Tcp>),
}

/// A plain function returning an `async move` block, not an `async fn`: an `async fn` moves
/// its arguments into locals, and the future keeps both copies for the session's whole life.
/// The block uses its captures in place, and the synchronous start is a function of its own so
/// none of its locals stays in the future either.
#[allow(clippy::manual_async_fn)]
fn run_session(
    socket: ClientSocket,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    mut guard: ActiveGuard,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some((client, registered, born)) = start_session(socket, peer, &ctx) else {
            return;
        };
        // The session is built by a boxed future that is gone once it has logged in, and is
        // served in place through a reference: a future keeps every local that lives across an
        // await, moved-from ones too, so building or moving it here would hold its parts two
        // or three times for the whole life of an idle session.
        let mut opened = Box::pin(open_session(
            client,
            registered.entry.id,
            peer,
            &ctx,
            &registered.entry,
            &mut guard,
            born,
        ))
        .await;
        let end = match &mut opened {
            Ok(session) => session.serve(&ctx).await,
            Err((end, _)) => std::mem::replace(end, End::Shutdown),
        };
        // Boxed: run once, at the end; inline, what it keeps across its awaits (the end, the
        // close) would take room in every idle session's future.
        Box::pin(finish(
            &mut opened,
            end,
            registered.entry.id,
            peer,
            born,
            &ctx,
        ))
        .await;
    }
}

/// Closes the session's backend side, logs how it ended, shuts the client's socket and counts
/// the end. Works on the session in place: moving its client out would copy the connection.
async fn finish(
    opened: &mut Result<Session, (End, PacketConn)>,
    end: End,
    id: u64,
    peer: SocketAddr,
    born: std::time::Instant,
    ctx: &ProxyContext,
) {
    if let Ok(session) = opened {
        session.close().await;
    }
    let client = match opened {
        Ok(session) => &mut session.client,
        Err((_, client)) => client,
    };
    log_end(&end, id, peer);
    // A client that sent QUIT expects nothing more and closes first: dropping the socket is
    // enough (a shutdown would mostly fail with ENOTCONN, a system call per session for nothing).
    if !matches!(end, End::ClientQuit) {
        client.shutdown().await;
    }
    let m = &ctx.metrics;
    m.connections.dec();
    m.conn_lifetime.observe(born.elapsed().as_secs_f64());
    m.disconnected(end.disconnect()).inc();
}

/// The synchronous start of a session on its worker: the client socket joins this worker's
/// reactor, the session is counted and registered. `None` when the socket cannot be polled here.
fn start_session(
    socket: ClientSocket,
    peer: SocketAddr,
    ctx: &ProxyContext,
) -> Option<(
    PacketConn,
    crate::proxy::registry::RegisteredSession,
    std::time::Instant,
)> {
    let (tcp, local_port) = match socket {
        ClientSocket::Adopted(tcp) => {
            let port = tcp.local_addr().map_or(0, |a| a.port());
            (*tcp, port)
        }
        ClientSocket::Handed { socket, local_port } => match Tcp::from_std(socket) {
            Ok(tcp) => (tcp, local_port),
            Err(e) => {
                warn!(client = %peer, error = %e, "connection dropped: a worker cannot poll it");
                return None;
            }
        },
    };
    let born = std::time::Instant::now();
    ctx.metrics.connections.inc();
    let id = ctx.next_conn_id();
    let _ = tcp.set_nodelay(true);
    let client = PacketConn::new(Stream::Plain(tcp), ctx.settings().conn_buffer_size);
    let registered = ctx.registry.register(id, peer);
    registered.entry.set_local_port(local_port);
    debug!(conn = id, client = %peer, "session opened");
    Some((client, registered, born))
}

/// The one line a session's end leaves in the log, at the level its cause deserves.
fn log_end(end: &End, id: u64, peer: SocketAddr) {
    let level = end
        .origin()
        .map_or(tracing::Level::DEBUG, ErrorSource::level);
    match (end, level) {
        (End::Told(e), tracing::Level::DEBUG) => {
            debug!(conn = id, client = %peer, error = %e, kind = e.kind(), source = e.origin().label(), "session closed")
        }
        (End::Told(e), _) => {
            info!(conn = id, client = %peer, error = %e, kind = e.kind(), source = e.origin().label(), "session closed")
        }
        (End::ClientGone(why), _) => {
            debug!(conn = id, client = %peer, reason = %why, "session closed: client connection ended")
        }
        (End::ClientStalled(why), _) => {
            info!(conn = id, client = %peer, reason = %why, "session closed: the client stopped sending mid-command")
        }
        (End::ClientQuit, _) => debug!(conn = id, client = %peer, "session closed: client quit"),
        (End::AuthDenied, _) => {
            debug!(conn = id, client = %peer, "session closed: authentication denied")
        }
        (End::Shutdown, _) => {
            debug!(conn = id, client = %peer, "session closed: proxy shutting down")
        }
    }
}

/// Logs the client in and builds its session, or says how it ended and hands the client back.
async fn open_session(
    mut client: PacketConn,
    id: u64,
    peer: SocketAddr,
    ctx: &Arc<ProxyContext>,
    entry: &Arc<SessionEntry>,
    guard: &mut ActiveGuard,
    born: std::time::Instant,
) -> Result<Session, (End, PacketConn)> {
    let settings = ctx.settings();
    let origin = entry.origin();
    let est = match establish(&mut client, id, peer, ctx, &origin).await {
        Ok(est) => est,
        Err(end) => return Err((end, client)),
    };
    guard.logged_in();
    client.set_stall_limit(settings.client_read_timeout);
    let handshake = born.elapsed().as_secs_f64();
    est.lease.backend().metrics.handshake.observe(handshake);
    entry.set_identity(&est.user, &est.lease.backend().addr);
    let mut txn = TxnState::default();
    txn.after_command(&[], Some(est.status), true);
    // The database named in the handshake is part of the state a rebuild restores.
    let mut tracked = Tracked::default();
    let mut identity = est.identity;
    if let Some(db) = identity.database.take().filter(|d| !d.is_empty()) {
        tracked.after_init_db(&db);
    }
    let identity = kept_identity::KeptIdentity::keep(identity);
    Ok(Session {
        id,
        peer,
        client,
        backend: est.backend,
        lease: est.lease,
        capabilities: est.capabilities,
        collation: est.collation,
        txn,
        entry: entry.clone(),
        user: est.user,
        // Grows to the statements seen (at most STATEMENT_PREFIX): an idle session that ran
        // short queries holds a few bytes, not a kilobyte.
        statement: Vec::new(),
        prepared: None,
        identity,
        client_capabilities: est.client_capabilities,
        proof: est.proof,
        login: None,
        redirect_retry_at: None,
        tracked,
        stmt_ids: stmt_ids::StmtIds::default(),
        born,
    })
}

impl End {
    /// A failed read from the client: a stall past client-read-timeout or a lost connection.
    pub(crate) fn client_read(e: std::io::Error) -> End {
        if e.kind() == std::io::ErrorKind::TimedOut {
            End::ClientStalled(e.to_string())
        } else {
            End::ClientGone(e.to_string())
        }
    }

    /// The series of `server_disconnection_total` this end counts in: where it came from.
    pub(crate) fn disconnect(&self) -> Disconnect {
        self.origin()
            .map_or(Disconnect::Success, ErrorSource::disconnect)
    }

    /// Where the failure that ended the session came from; none when the client quit.
    fn origin(&self) -> Option<ErrorSource> {
        match self {
            End::ClientQuit => None,
            End::Shutdown => Some(ErrorSource::ProxyShutdown),
            End::ClientGone(_) | End::ClientStalled(_) => Some(ErrorSource::ClientNetwork),
            End::AuthDenied => Some(ErrorSource::ClientAuth),
            End::Told(e) => Some(e.origin()),
        }
    }
}

pub(crate) async fn tell(client: &mut PacketConn, seq: u8, err: ClientError) -> End {
    let _ = client.write_packet(seq, &err.to_packet().encode()).await;
    End::Told(err)
}

/// Sends an error in place of the greeting: max-connections and shutdown rejections.
pub async fn reject<S: tokio::io::AsyncWrite + Unpin>(mut tcp: S, err: ClientError) {
    use tokio::io::AsyncWriteExt;
    let payload = err.to_packet().encode();
    let mut pkt = Vec::with_capacity(payload.len() + HEADER_LEN);
    crate::protocol::conn::put_header(&mut pkt, payload.len(), 0);
    pkt.extend_from_slice(&payload);
    let _ = crate::timer::timeout(std::time::Duration::from_secs(2), async {
        let _ = tcp.write_all(&pkt).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// A backend connection authenticated for the client.
struct Established {
    backend: PacketConn,
    lease: BackendLease,
    capabilities: u32,
    collation: u8,
    status: u16,
    user: String,
    identity: HandshakeResponse,
    client_capabilities: u32,
    proof: Proof,
}

async fn establish(
    client: &mut PacketConn,
    id: u64,
    peer: SocketAddr,
    ctx: &Arc<ProxyContext>,
    origin: &crate::balance::policy::Origin,
) -> Result<Established, End> {
    let settings = ctx.settings();
    let (mut early, early_failure) = if ctx.closing.is_cancelled() {
        (None, None)
    } else {
        match early::Early::connect(ctx, &settings, origin).await {
            Some(Ok(e)) => (Some(e), None),
            Some(Err(failed)) => (None, Some(failed)),
            None => (None, None),
        }
    };
    let answered_in_time = {
        let handshake = timeout(
            settings.client_handshake_timeout,
            accept_client(client, ctx, id, early.as_ref().map(|e| e.greeting())),
        );
        tokio::pin!(handshake);
        match early {
            Some(_) => tokio::select! {
                r = &mut handshake => r,
                _ = crate::timer::sleep(early::Early::hold(&settings)) => {
                    early = None;
                    handshake.await
                }
            },
            None => handshake.await,
        }
    };
    let hello = match answered_in_time {
        Err(_) => {
            let secs = settings.client_handshake_timeout.as_secs();
            return Err(tell(client, 1, ClientError::HandshakeTimeout { secs }).await);
        }
        Ok(Err(ClientHandshakeError::Malformed { reason, seq })) => {
            debug!(conn = id, client = %peer, %reason, "malformed handshake");
            let err = ClientError::HandshakeMalformed { reason };
            return Err(tell(client, seq.wrapping_add(1), err).await);
        }
        Ok(Err(ClientHandshakeError::TlsRequired { seq })) => {
            debug!(conn = id, client = %peer, "plaintext client refused: TLS with a client certificate is required");
            let err = ClientError::ClientTlsRequired;
            return Err(tell(client, seq.wrapping_add(1), err).await);
        }
        Ok(Err(ClientHandshakeError::Io(e))) => return Err(End::ClientGone(e.to_string())),
        Ok(Ok(h)) => h,
    };
    let reply_seq = hello.seq.wrapping_add(1);
    if ctx.closing.is_cancelled() {
        return Err(tell(client, reply_seq, ClientError::ShuttingDown).await);
    }

    // The user is known only now: a backend greeted early for another namespace's group is
    // let go, and the login is dialed within this user's group.
    let group = namespace::group_of(&settings, &String::from_utf8_lossy(&hello.response.user));
    let outside = namespace::outside(ctx, &settings, &group);
    let in_group = |b: &crate::balance::Backend| !outside.iter().any(|o| o.addr == b.addr);
    if early.as_ref().is_some_and(|e| !in_group(e.backend())) {
        early = None;
    }
    let early_failure = early_failure.filter(|(b, _)| in_group(b));
    let forwarded = match early {
        Some(e) => e.answer(&hello, ctx, &settings).await,
        None => Ok(None),
    };
    let within = Within {
        origin,
        outside,
        group: &group,
    };
    let answered = match forwarded {
        Ok(Some(x)) => Ok(x),
        Ok(None) => connect_backend(&hello, ctx, &settings, early_failure, &within)
            .await
            .map(|(d, l)| (d, l, ProofCapture::default())),
        Err(e) => Err(e),
    };
    let (mut dialed, lease, capture) = match answered {
        Ok(x) => x,
        Err(e) => {
            warn!(conn = id, client = %peer, error = %e, "no backend for new session");
            return Err(tell(client, reply_seq, e).await);
        }
    };
    let delta = hello.seq.wrapping_sub(dialed.seq);
    let backend_addr = lease.backend().addr.clone();
    let auth = relay_auth_bounded(client, &mut dialed.conn, delta, capture, &settings).await;
    let (status, proof) = match auth {
        Ok(AuthOutcome::Ok(s, proof)) => (s, proof),
        Ok(AuthOutcome::Denied(err)) => {
            info!(conn = id, client = %peer, user = %String::from_utf8_lossy(&hello.response.user), backend = %backend_addr, code = err.code, "audit: login failed: authentication denied by backend");
            return Err(End::AuthDenied);
        }
        Err(AuthRelayError::Client(e)) => return Err(End::ClientGone(e.to_string())),
        Err(AuthRelayError::Backend(e)) => {
            let err = ClientError::BackendLost {
                backend: backend_addr,
                detail: format!("during authentication: {e}"),
            };
            return Err(tell(client, reply_seq, err).await);
        }
    };
    if hello.capabilities & cap::COMPRESS != 0 {
        client.enable_compression();
    }
    debug!(conn = id, client = %peer, backend = %backend_addr, "session authenticated");
    Ok(Established {
        backend: dialed.conn,
        lease,
        capabilities: dialed.capabilities,
        collation: hello.response.collation,
        status,
        user: String::from_utf8_lossy(&hello.response.user).into_owned(),
        identity: hello.response.clone(),
        client_capabilities: hello.capabilities,
        proof,
    })
}

/// Backends in fail-backend-list: they get no new sessions.
fn not_for_new_sessions(
    ctx: &ProxyContext,
    settings: &super::context::SessionSettings,
) -> Vec<Arc<crate::balance::Backend>> {
    ctx.backends
        .snapshot()
        .iter()
        .filter(|b| settings.fail_backend_list.contains(&b.addr))
        .cloned()
        .collect()
}

/// Counts a failed dial and marks the backend down until health checks see it again.
fn dial_failed(ctx: &ProxyContext, backend: &crate::balance::Backend, reason: &str) {
    backend.metrics.dial_fail.inc();
    if backend.mark_unhealthy(reason) {
        warn!(backend = %backend.addr, %reason, "backend marked down after a failed connection");
        ctx.events.push(
            "backend-down",
            format!("backend {} is down: {reason}", backend.addr),
        );
    }
}

/// A backend the proxy cannot speak TLS with although it must: counted as a failed dial, and
/// the client's error (no other backend is tried, as the cause is the proxy's configuration).
fn tls_unavailable(
    ctx: &ProxyContext,
    backend: &crate::balance::Backend,
    detail: String,
) -> ClientError {
    backend.metrics.dial_fail.inc();
    ctx.metrics.get_backend_fail.inc();
    ClientError::BackendTlsUnavailable {
        backend: backend.addr.clone(),
        detail,
    }
}

/// Where a login may go: its origin (for `[[balance.routes]]`) and the backends outside its
/// namespace group.
struct Within<'a> {
    origin: &'a crate::balance::policy::Origin,
    outside: Vec<Arc<crate::balance::Backend>>,
    group: &'a crate::balance::routes_namespace::Group,
}

/// Tries healthy backends, fewest sessions first, until one accepts the client's identity.
/// `earlier` is a backend already tried for this session, and why it failed.
async fn connect_backend(
    hello: &ClientHello,
    ctx: &ProxyContext,
    settings: &super::context::SessionSettings,
    earlier: Option<early::Failed>,
    within: &Within<'_>,
) -> Result<(super::backend_conn::Dialed, BackendLease), ClientError> {
    let origin = within.origin;
    let looking = std::time::Instant::now();
    let mut tried = not_for_new_sessions(ctx, settings);
    tried.extend(within.outside.iter().cloned());
    let mut failures: Vec<String> = Vec::new();
    if let Some((backend, reason)) = earlier {
        dial_failed(ctx, &backend, &reason);
        failures.push(format!("{} ({reason})", backend.addr));
        tried.push(backend);
    }
    while let Some(backend) = ctx.selector.select_for(&tried, origin) {
        tried.push(backend.clone());
        let lease = BackendLease::new(backend.clone());
        let attempt = timeout(
            settings.backend_connect_timeout,
            dial(
                &backend,
                hello.into(),
                AuthAnswer::PassThrough,
                ctx,
                settings.conn_buffer_size,
                settings.require_backend_tls,
            ),
        )
        .await;
        let reason = match attempt {
            Ok(Ok(d)) => {
                let m = &ctx.metrics;
                m.get_backend_ok.inc();
                m.get_backend_duration
                    .observe(looking.elapsed().as_secs_f64());
                return Ok((d, lease));
            }
            // Only failures another attempt could get past are retried on the next backend.
            Ok(Err(e)) if !e.origin().retryable() => {
                return Err(tls_unavailable(ctx, &backend, e.to_string()))
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "timed out after {} s",
                settings.backend_connect_timeout.as_secs()
            ),
        };
        dial_failed(ctx, &backend, &reason);
        failures.push(format!("{} ({reason})", backend.addr));
    }
    let m = &ctx.metrics;
    m.get_backend_fail.inc();
    m.get_backend_duration
        .observe(looking.elapsed().as_secs_f64());
    if failures.is_empty() {
        let detail = if settings.namespaces.is_empty() {
            ctx.selector.unavailable_reason_for(origin)
        } else {
            namespace::unavailable(ctx, settings, within.group)
        };
        Err(ClientError::NoBackendAvailable { detail })
    } else {
        Err(ClientError::BackendConnectFailed {
            attempts: failures.join("; "),
        })
    }
}
