//! The client side of the connection phase: the proxy's own greeting, the optional TLS
//! upgrade, and the client's handshake response.

use super::context::ProxyContext;
use crate::protocol::constants::{cap, status, DEFAULT_COLLATION, NATIVE_PASSWORD_PLUGIN};
use crate::protocol::handshake::{is_ssl_request, Greeting, HandshakeResponse};
use crate::protocol::PacketConn;
use rand::Rng;
use std::io;

/// Handshake packets are small; anything bigger is not a MySQL client.
pub const HANDSHAKE_PACKET_LIMIT: usize = 64 * 1024;

pub struct ClientHello {
    pub response: HandshakeResponse,
    /// Sequence id of the client's response packet.
    pub seq: u8,
    /// Capabilities in force between client and proxy.
    pub capabilities: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientHandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{reason}")]
    Malformed { reason: String, seq: u8 },
    /// A plaintext client where `[security.server-tls] ca` demands TLS with a certificate.
    #[error("the client did not ask for TLS, which this port requires")]
    TlsRequired { seq: u8 },
}

fn scramble() -> Vec<u8> {
    // Printable bytes without NUL or '$', like MySQL's own scrambles.
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| loop {
            let b: u8 = rng.gen_range(0x21..0x7f);
            if b != b'$' {
                break b;
            }
        })
        .collect()
}

/// A packet the client sends during the handshake; an oversized one is a malformed handshake
/// (garbage or another protocol), not an I/O failure.
async fn read_response(
    client: &mut PacketConn,
    last_seq: u8,
) -> Result<(u8, bytes::BytesMut), ClientHandshakeError> {
    match client.read_packet_exact(HANDSHAKE_PACKET_LIMIT).await {
        Ok(x) => Ok(x),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(ClientHandshakeError::Malformed {
            reason: e.to_string(),
            seq: last_seq,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Greets the client and reads its handshake response. `backend_greeting`, when given, is the
/// scramble and auth plugin of a backend already connected for this client: greeting with them
/// lets the client's answer go to that backend as it is, with no auth switch.
pub async fn accept_client(
    client: &mut PacketConn,
    ctx: &ProxyContext,
    conn_id: u64,
    backend_greeting: Option<(Vec<u8>, String)>,
) -> Result<ClientHello, ClientHandshakeError> {
    let (server_version, backend_caps) = ctx.greeting_hint();
    // COMPRESS is the proxy's own business on the client side; the rest must be shared.
    let mut offered = cap::PROXY_DEFAULT & (backend_caps | cap::COMPRESS);
    offered |= cap::PROTOCOL_41 | cap::PLUGIN_AUTH | cap::SECURE_CONNECTION;
    if ctx.tls.server.is_some() {
        offered |= cap::SSL;
    }
    let (salt, auth_plugin) =
        backend_greeting.unwrap_or_else(|| (scramble(), NATIVE_PASSWORD_PLUGIN.into()));
    let greeting = Greeting {
        server_version,
        connection_id: conn_id as u32,
        scramble: salt,
        capabilities: offered,
        collation: DEFAULT_COLLATION,
        status: status::AUTOCOMMIT,
        auth_plugin,
    };
    client.write_packet(0, &greeting.encode()).await?;

    let (mut seq, mut payload) = read_response(client, 0).await?;
    if is_ssl_request(&payload) {
        let Some(acceptor) = ctx.tls.server.clone() else {
            return Err(ClientHandshakeError::Malformed {
                reason: "the client asked for TLS, which this proxy does not offer".into(),
                seq,
            });
        };
        client.stream_mut().upgrade_server(&acceptor).await?;
        (seq, payload) = read_response(client, seq).await?;
    } else if ctx.tls.require_client_cert {
        return Err(ClientHandshakeError::TlsRequired { seq });
    }
    let response =
        HandshakeResponse::parse(&payload).map_err(|e| ClientHandshakeError::Malformed {
            reason: e.to_string(),
            seq,
        })?;
    let capabilities = response.capabilities & offered;
    Ok(ClientHello {
        response,
        seq,
        capabilities,
    })
}
