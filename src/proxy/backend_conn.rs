//! The backend side of a session: dialing a backend, its greeting, the optional TLS upgrade,
//! forwarding the client's identity with an unknown auth plugin, and relaying the auth
//! exchange so the backend's own scramble and plugin reach the client.

use super::client_handshake::{ClientHello, HANDSHAKE_PACKET_LIMIT};
use super::context::ProxyContext;
use super::tls::server_name;
use crate::balance::Backend;
use crate::protocol::constants::{
    cap, AUTH_MORE_DATA_HEADER, ERR_HEADER, OK_HEADER, UNKNOWN_AUTH_PLUGIN,
};
use crate::protocol::handshake::{ssl_request, Greeting, HandshakeResponse};
use crate::protocol::response::{ok_status, ErrPacket};
use crate::protocol::{PacketConn, Stream};
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(io::Error),
    #[error("backend refused the connection: {0}")]
    Refused(ErrPacket),
    #[error("backend greeting is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Tls(String),
}

/// A backend connection that has been sent the client's identity and awaits the auth result.
pub struct Dialed {
    pub conn: PacketConn,
    /// Sequence id of the response the proxy sent.
    pub seq: u8,
    pub capabilities: u32,
}

pub async fn dial(
    backend: &Arc<Backend>,
    hello: &ClientHello,
    ctx: &ProxyContext,
    buf_size: usize,
    require_tls: bool,
) -> Result<Dialed, DialError> {
    let tcp = TcpStream::connect(&backend.addr)
        .await
        .map_err(DialError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut conn = PacketConn::new(Stream::Plain(tcp), buf_size);
    let (_, payload) = conn
        .read_packet(HANDSHAKE_PACKET_LIMIT)
        .await
        .map_err(DialError::Connect)?;
    if payload.first() == Some(&ERR_HEADER) {
        let err = ErrPacket::parse(&payload).unwrap_or_else(|| ErrPacket::new(0, "HY000", "?"));
        return Err(DialError::Refused(err));
    }
    let greeting = Greeting::parse(&payload).map_err(|e| DialError::Malformed(e.to_string()))?;
    backend.record_greeting(&greeting.server_version, greeting.capabilities);

    let mut caps = hello.capabilities & greeting.capabilities & !(cap::COMPRESS | cap::SSL);
    caps |= cap::PLUGIN_AUTH | cap::PROTOCOL_41 | cap::SECURE_CONNECTION;
    let resp = &hello.response;
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
                .map_err(|e| DialError::Tls(format!("TLS handshake failed: {e}")))?;
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
    let forwarded = HandshakeResponse {
        capabilities: caps,
        max_packet: resp.max_packet,
        collation: resp.collation,
        user: resp.user.clone(),
        auth_data: Vec::new(),
        database: resp.database.clone(),
        auth_plugin: Some(UNKNOWN_AUTH_PLUGIN.into()),
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
    /// Status flags of the backend's OK.
    Ok(u16),
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

/// Relays the authentication exchange until the backend says OK or ERR. `delta` maps backend
/// sequence ids to the client's (they differ when only one side upgraded to TLS).
pub async fn relay_auth(
    client: &mut PacketConn,
    backend: &mut PacketConn,
    delta: u8,
) -> Result<AuthOutcome, AuthRelayError> {
    // Bounded: a real exchange is a handful of round trips.
    for _ in 0..16 {
        let (bseq, p) = backend
            .read_packet(HANDSHAKE_PACKET_LIMIT)
            .await
            .map_err(AuthRelayError::Backend)?;
        client
            .write_packet(bseq.wrapping_add(delta), &p)
            .await
            .map_err(AuthRelayError::Client)?;
        match p.first() {
            Some(&OK_HEADER) => return Ok(AuthOutcome::Ok(ok_status(&p).unwrap_or(0))),
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
