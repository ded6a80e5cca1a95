//! The backend side of a session: dialing a backend, its greeting, the optional TLS upgrade,
//! forwarding the client's identity with an unknown auth plugin, and relaying the auth
//! exchange so the backend's own scramble and plugin reach the client.

use super::client_handshake::{ClientHello, HANDSHAKE_PACKET_LIMIT};
use super::context::{ProxyContext, SessionSettings};
use super::migrate::credential::{native_reply, Proof, ProofCapture};
use super::tls::server_name;
use crate::balance::Backend;
use crate::protocol::constants::{
    cap, AUTH_MORE_DATA_HEADER, EOF_HEADER, ERR_HEADER, NATIVE_PASSWORD_PLUGIN, OK_HEADER,
    UNKNOWN_AUTH_PLUGIN,
};
use crate::protocol::handshake::{ssl_request, Greeting, HandshakeError, HandshakeResponse};
use crate::protocol::response::{ok_status, ErrPacket};
use crate::protocol::{PacketConn, Stream, Tcp};
use std::io;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error("backend refused the connection: {0}")]
    Refused(ErrPacket),
    #[error("backend greeting is malformed: {0}")]
    Malformed(#[source] HandshakeError),
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] io::Error),
    /// TLS to the backend is required but cannot be had (configuration or backend).
    #[error("{0}")]
    Tls(String),
}

/// The auth plugin TiDB accepts a session token with.
pub const TIDB_TOKEN_PLUGIN: &str = "tidb_session_token";

/// A backend connection that has been sent the client's identity and awaits the auth result.
pub struct Dialed {
    pub conn: PacketConn,
    /// Sequence id of the response the proxy sent.
    pub seq: u8,
    pub capabilities: u32,
}

/// How the proxy answers a backend's greeting for the client.
#[derive(Clone, Copy)]
pub enum AuthAnswer<'a> {
    /// An unknown plugin and no data: the backend asks again with an auth switch carrying its
    /// own plugin and scramble, which the client answers (the first connection of a session
    /// when its greeting carried the proxy's own scramble).
    PassThrough,
    /// The client's own plugin and auth data, computed over this backend's scramble because
    /// the proxy greeted the client with it: no auth switch, one round trip fewer.
    Forward,
    /// `tidb_session_token` with a token from SHOW SESSION_STATES (TiDB migration).
    SessionToken(&'a [u8]),
    /// mysql_native_password computed from SHA1(password) (MySQL/MariaDB migration, and the
    /// service account).
    Native(&'a [u8; 20]),
    /// mysql_native_password for a user without a password.
    EmptyPassword,
}

/// The client identity a backend connection is opened for.
#[derive(Clone, Copy)]
pub struct Identity<'a> {
    pub response: &'a HandshakeResponse,
    /// Capabilities in force between the client and the proxy.
    pub capabilities: u32,
}

impl<'a> From<&'a ClientHello> for Identity<'a> {
    fn from(h: &'a ClientHello) -> Self {
        Identity {
            response: &h.response,
            capabilities: h.capabilities,
        }
    }
}

pub async fn dial(
    backend: &Arc<Backend>,
    who: Identity<'_>,
    answer: AuthAnswer<'_>,
    ctx: &ProxyContext,
    buf_size: usize,
    require_tls: bool,
) -> Result<Dialed, DialError> {
    let (conn, greeting) = greet(backend, buf_size).await?;
    answer_greeting(conn, &greeting, backend, who, answer, ctx, require_tls).await
}

tokio::task_local! {
    /// The client's (source, destination) addresses, set for a session's task when
    /// `proxy-protocol = "v2"`: every backend connection it opens (first login, moves) then
    /// starts with a PROXY header, so the backend sees the client's address, as with TiProxy.
    static CLIENT_ORIGIN: (std::net::SocketAddr, std::net::SocketAddr);
}

/// Runs `session` with its backend connections announcing `origin` in a PROXY v2 header.
/// A plain function, not an `async fn`: one that awaited the future it was given would hold it
/// twice (as its argument and as what it awaits), doubling every session's memory. Without an
/// origin the session runs outside any task-local scope, which every poll would enter and leave.
pub fn with_client_origin<F: std::future::Future>(
    origin: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    session: F,
) -> tokio_util::either::Either<
    tokio::task::futures::TaskLocalFuture<(std::net::SocketAddr, std::net::SocketAddr), F>,
    F,
> {
    match origin {
        Some(o) => tokio_util::either::Either::Left(CLIENT_ORIGIN.scope(o, session)),
        None => tokio_util::either::Either::Right(session),
    }
}

/// Connects to `backend` and reads its greeting.
pub async fn greet(
    backend: &Arc<Backend>,
    buf_size: usize,
) -> Result<(PacketConn, Greeting), DialError> {
    let mut tcp = Tcp::connect(&backend.addr)
        .await
        .map_err(DialError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if let Ok((source, destination)) = CLIENT_ORIGIN.try_with(|o| *o) {
        use tokio::io::AsyncWriteExt;
        let header = crate::protocol::proxy_protocol::encode_v2(source, destination);
        tcp.write_all(&header).await.map_err(DialError::Connect)?;
    }
    let mut conn = PacketConn::new(Stream::Plain(tcp), buf_size);
    let (_, payload) = conn
        .read_packet(HANDSHAKE_PACKET_LIMIT)
        .await
        .map_err(DialError::Connect)?;
    if payload.first() == Some(&ERR_HEADER) {
        let err = ErrPacket::parse(&payload).unwrap_or_else(|| ErrPacket::new(0, "HY000", "?"));
        return Err(DialError::Refused(err));
    }
    let greeting = Greeting::parse(&payload).map_err(DialError::Malformed)?;
    backend.record_greeting(&greeting.server_version, greeting.capabilities);
    Ok((conn, greeting))
}

/// Answers a backend's greeting for the client: TLS first where it applies, then the client's
/// identity with `answer`'s plugin and data.
pub async fn answer_greeting(
    mut conn: PacketConn,
    greeting: &Greeting,
    backend: &Backend,
    who: Identity<'_>,
    answer: AuthAnswer<'_>,
    ctx: &ProxyContext,
    require_tls: bool,
) -> Result<Dialed, DialError> {
    let mut caps = who.capabilities & greeting.capabilities & !(cap::COMPRESS | cap::SSL);
    caps |= cap::PLUGIN_AUTH | cap::PROTOCOL_41 | cap::SECURE_CONNECTION;
    let resp = who.response;
    // An empty database name is not "no database" to MariaDB: views then fail with 1046.
    if resp.database.is_none() {
        caps &= !cap::CONNECT_WITH_DB;
    }
    let mut seq = 1u8;
    let backend_tls = greeting.capabilities & cap::SSL != 0;
    match (&ctx.tls.client, backend_tls) {
        (Some(connector), true) => {
            caps |= cap::SSL;
            conn.write_packet(seq, &ssl_request(caps, resp.max_packet, resp.collation))
                .await
                .map_err(DialError::Connect)?;
            seq += 1;
            conn.stream_mut()
                .upgrade_client(connector, server_name(&backend.addr))
                .await
                .map_err(DialError::TlsHandshake)?;
        }
        (None, _) if require_tls => {
            return Err(DialError::Tls(
                "[security.sql-tls] has no ca, cert or skip-ca, so the proxy cannot speak TLS to backends".into(),
            ))
        }
        (Some(_), false) if require_tls => {
            return Err(DialError::Tls("the backend does not offer TLS".into()))
        }
        _ => {}
    }
    let (plugin, auth_data) = match answer {
        AuthAnswer::PassThrough => (UNKNOWN_AUTH_PLUGIN, Vec::new()),
        AuthAnswer::Forward => (
            resp.auth_plugin.as_deref().unwrap_or(&greeting.auth_plugin),
            resp.auth_data.clone(),
        ),
        AuthAnswer::SessionToken(t) => (TIDB_TOKEN_PLUGIN, t.to_vec()),
        AuthAnswer::Native(stage1) => (
            NATIVE_PASSWORD_PLUGIN,
            native_reply(stage1, &greeting.scramble),
        ),
        AuthAnswer::EmptyPassword => (NATIVE_PASSWORD_PLUGIN, Vec::new()),
    };
    let forwarded = HandshakeResponse {
        capabilities: caps,
        max_packet: resp.max_packet,
        collation: resp.collation,
        user: resp.user.clone(),
        auth_data,
        database: resp.database.clone(),
        auth_plugin: Some(plugin.into()),
        attrs: resp.attrs.clone(),
    };
    conn.write_packet(seq, &forwarded.encode())
        .await
        .map_err(DialError::Connect)?;
    Ok(Dialed {
        conn,
        seq,
        capabilities: caps,
    })
}

pub enum AuthOutcome {
    /// Status flags of the backend's OK, and what the exchange proves for re-authentication.
    Ok(u16, Proof),
    /// The backend's ERR, already forwarded to the client.
    Denied(ErrPacket),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthRelayError {
    #[error("client: {0}")]
    Client(io::Error),
    #[error("backend: {0}")]
    Backend(io::Error),
}

/// `relay_auth` within backend-connect-timeout + client-handshake-timeout: a backend that greets
/// and then hangs would otherwise hold the client forever (the dial timeout ends at the
/// greeting), while the client's own replies get their handshake allowance.
pub async fn relay_auth_bounded(
    client: &mut PacketConn,
    backend: &mut PacketConn,
    delta: u8,
    capture: ProofCapture,
    settings: &SessionSettings,
) -> Result<AuthOutcome, AuthRelayError> {
    let limit = settings.backend_connect_timeout + settings.client_handshake_timeout;
    match crate::timer::timeout(limit, relay_auth(client, backend, delta, capture)).await {
        Ok(r) => r,
        Err(_) => Err(AuthRelayError::Backend(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer to authentication within {} s", limit.as_secs()),
        ))),
    }
}

/// Relays the authentication exchange until the backend says OK or ERR. `delta` maps backend
/// sequence ids to the client's (they differ when only one side upgraded to TLS). `capture`
/// holds what the exchange has proven so far (the scramble and reply of a forwarded login).
pub async fn relay_auth(
    client: &mut PacketConn,
    backend: &mut PacketConn,
    delta: u8,
    mut capture: ProofCapture,
) -> Result<AuthOutcome, AuthRelayError> {
    // Bounded: a real exchange is a handful of round trips.
    for _ in 0..16 {
        let (bseq, p) = backend
            .read_packet(HANDSHAKE_PACKET_LIMIT)
            .await
            .map_err(AuthRelayError::Backend)?;
        capture.on_backend(&p);
        client
            .write_packet(bseq.wrapping_add(delta), &p)
            .await
            .map_err(AuthRelayError::Client)?;
        match p.first() {
            Some(&OK_HEADER) => {
                return Ok(AuthOutcome::Ok(
                    ok_status(&p).unwrap_or(0),
                    capture.finish(),
                ))
            }
            Some(&ERR_HEADER) => {
                return Ok(AuthOutcome::Denied(
                    ErrPacket::parse(&p).unwrap_or_else(|| ErrPacket::new(0, "HY000", "")),
                ))
            }
            // caching_sha2 fast-auth success: the OK follows without a client reply.
            Some(&AUTH_MORE_DATA_HEADER) if p.len() == 2 && p[1] == 3 => continue,
            _ => {}
        }
        let (cseq, c) = client
            .read_packet(HANDSHAKE_PACKET_LIMIT)
            .await
            .map_err(AuthRelayError::Client)?;
        capture.on_client(&c);
        backend
            .write_packet(cseq.wrapping_sub(delta), &c)
            .await
            .map_err(AuthRelayError::Backend)?;
    }
    Err(AuthRelayError::Backend(io::Error::new(
        io::ErrorKind::InvalidData,
        "authentication did not finish after 16 round trips",
    )))
}

/// Why a login the proxy composed itself did not finish.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the backend refused the login: {0}")]
    Refused(ErrPacket),
    #[error("the backend wants plugin {0}, not mysql_native_password")]
    Plugin(String),
    #[error("unexpected packet {0:#04x} during login")]
    Unexpected(u8),
    #[error("empty packet during login")]
    Empty,
    #[error("login did not finish")]
    Unfinished,
}

/// Reads the answer to a response the proxy composed itself (`AuthAnswer::Native` or
/// `SessionToken`), answering a native-password auth switch; returns the OK's status flags.
pub async fn finish_auth(conn: &mut PacketConn, answer: AuthAnswer<'_>) -> Result<u16, AuthError> {
    for _ in 0..4 {
        let (seq, p) = conn.read_packet(HANDSHAKE_PACKET_LIMIT).await?;
        match (p.first(), answer) {
            (Some(&OK_HEADER), _) => return Ok(ok_status(&p).unwrap_or(0)),
            (Some(&ERR_HEADER), _) => {
                let e = ErrPacket::parse(&p).unwrap_or_else(|| ErrPacket::new(0, "HY000", ""));
                return Err(AuthError::Refused(e));
            }
            (Some(&EOF_HEADER), AuthAnswer::Native(_) | AuthAnswer::EmptyPassword) => {
                let rest = &p[1..];
                let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                if &rest[..nul] != NATIVE_PASSWORD_PLUGIN.as_bytes() {
                    return Err(AuthError::Plugin(
                        String::from_utf8_lossy(&rest[..nul]).into_owned(),
                    ));
                }
                let data = rest.get(nul + 1..).unwrap_or_default();
                let scramble = data.strip_suffix(&[0]).unwrap_or(data);
                let reply = match answer {
                    AuthAnswer::Native(stage1) => native_reply(stage1, scramble),
                    _ => Vec::new(),
                };
                conn.write_packet(seq.wrapping_add(1), &reply).await?;
            }
            (Some(h), _) => return Err(AuthError::Unexpected(*h)),
            (None, _) => return Err(AuthError::Empty),
        }
    }
    Err(AuthError::Unfinished)
}
