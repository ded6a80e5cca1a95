//! One client session: handshake, backend choice, authentication pass-through, then the
//! command loop that relays each command and its response and tracks the transaction state.

use super::backend_conn::{dial, relay_auth, AuthOutcome, AuthRelayError, DialError};
use super::client_handshake::{accept_client, ClientHandshakeError, ClientHello};
use super::context::{ActiveGuard, ProxyContext};
use super::digest::digest;
use super::error::ClientError;
use super::query_log::QueryError;
use super::registry::SessionEntry;
use super::relay::{relay, OnePacket, RelayError, UntilEmpty};
use super::response::{ResponseObserver, Shape};
use super::txn::TxnState;
use crate::balance::{BackendLease, BackendSelector};
use crate::protocol::conn::{parse_header, HEADER_LEN};
use crate::protocol::constants::{cap, cmd, UNKNOWN_AUTH_PLUGIN};
use crate::protocol::handshake::ChangeUser;
use crate::protocol::{PacketConn, Stream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, warn};

/// A control packet the proxy must read whole (COM_CHANGE_USER, refused commands).
const CONTROL_PACKET_LIMIT: usize = 1 << 20;

enum Flow {
    Continue,
    Quit,
}

/// Why a session ended; what the client was told, if anything, was sent already.
#[derive(Debug)]
enum End {
    ClientQuit,
    ClientGone(String),
    Told(ClientError),
    AuthDenied,
    Shutdown,
}

struct Session {
    id: u64,
    peer: SocketAddr,
    client: PacketConn,
    backend: PacketConn,
    lease: BackendLease,
    capabilities: u32,
    collation: u8,
    txn: TxnState,
    entry: Arc<SessionEntry>,
    user: String,
    /// The start of the current COM_QUERY / COM_STMT_PREPARE text, for error digests.
    statement: Vec<u8>,
    /// Digests of prepared statements by id, for errors of COM_STMT_EXECUTE.
    prepared: HashMap<u32, Box<str>>,
}

/// How much statement text is kept for a digest.
const STATEMENT_PREFIX: usize = 1024;

pub async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>, guard: ActiveGuard) {
    let _guard = guard;
    let id = ctx.next_conn_id();
    let _ = tcp.set_nodelay(true);
    let settings = ctx.settings();
    let mut client = PacketConn::new(Stream::Plain(tcp), settings.conn_buffer_size);
    let registered = ctx.registry.register(id, peer);
    debug!(conn = id, client = %peer, "session opened");
    let end = match establish(&mut client, id, peer, &ctx).await {
        Ok(est) => {
            registered
                .entry
                .set_identity(&est.user, &est.lease.backend().addr);
            let mut txn = TxnState::default();
            txn.after_command(&[], Some(est.status), true);
            let mut session = Session {
                id,
                peer,
                client,
                backend: est.backend,
                lease: est.lease,
                capabilities: est.capabilities,
                collation: est.collation,
                txn,
                entry: registered.entry.clone(),
                user: est.user,
                statement: Vec::with_capacity(STATEMENT_PREFIX),
                prepared: HashMap::new(),
            };
            let end = session.serve(&ctx).await;
            session.close().await;
            client = session.client;
            end
        }
        Err(end) => end,
    };
    match &end {
        End::Told(e) => {
            debug!(conn = id, client = %peer, error = %e, kind = e.kind(), "session closed")
        }
        End::ClientGone(why) => {
            debug!(conn = id, client = %peer, reason = %why, "session closed: client connection ended")
        }
        End::ClientQuit => debug!(conn = id, client = %peer, "session closed: client quit"),
        End::AuthDenied => {
            debug!(conn = id, client = %peer, "session closed: authentication denied")
        }
        End::Shutdown => debug!(conn = id, client = %peer, "session closed: proxy shutting down"),
    }
    client.shutdown().await;
}

async fn tell(client: &mut PacketConn, seq: u8, err: ClientError) -> End {
    let _ = client.write_packet(seq, &err.to_packet().encode()).await;
    End::Told(err)
}

/// Sends an error in place of the greeting: max-connections and shutdown rejections.
pub async fn reject(mut tcp: TcpStream, err: ClientError) {
    use tokio::io::AsyncWriteExt;
    let payload = err.to_packet().encode();
    let mut pkt = Vec::with_capacity(payload.len() + HEADER_LEN);
    crate::protocol::conn::put_header(&mut pkt, payload.len(), 0);
    pkt.extend_from_slice(&payload);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
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
}

async fn establish(
    client: &mut PacketConn,
    id: u64,
    peer: SocketAddr,
    ctx: &Arc<ProxyContext>,
) -> Result<Established, End> {
    let settings = ctx.settings();
    let hello = match timeout(
        settings.client_handshake_timeout,
        accept_client(client, ctx, id),
    )
    .await
    {
        Err(_) => {
            let secs = settings.client_handshake_timeout.as_secs();
            return Err(tell(client, 1, ClientError::HandshakeTimeout { secs }).await);
        }
        Ok(Err(ClientHandshakeError::Malformed { reason, seq })) => {
            debug!(conn = id, client = %peer, %reason, "malformed handshake");
            let err = ClientError::HandshakeMalformed { reason };
            return Err(tell(client, seq.wrapping_add(1), err).await);
        }
        Ok(Err(ClientHandshakeError::Io(e))) => return Err(End::ClientGone(e.to_string())),
        Ok(Ok(h)) => h,
    };
    let reply_seq = hello.seq.wrapping_add(1);
    if ctx.closing.is_cancelled() {
        return Err(tell(client, reply_seq, ClientError::ShuttingDown).await);
    }

    let (mut dialed, lease) = match connect_backend(&hello, ctx, &settings).await {
        Ok(x) => x,
        Err(e) => {
            warn!(conn = id, client = %peer, error = %e, "no backend for new session");
            return Err(tell(client, reply_seq, e).await);
        }
    };
    let delta = hello.seq.wrapping_sub(dialed.seq);
    let backend_addr = lease.backend().addr.clone();
    let status = match relay_auth(client, &mut dialed.conn, delta).await {
        Ok(AuthOutcome::Ok(s)) => s,
        Ok(AuthOutcome::Denied(err)) => {
            debug!(conn = id, client = %peer, backend = %backend_addr, code = err.code, "authentication denied by backend");
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
    })
}

/// Tries healthy backends, fewest sessions first, until one accepts the client's identity.
async fn connect_backend(
    hello: &ClientHello,
    ctx: &ProxyContext,
    settings: &super::context::SessionSettings,
) -> Result<(super::backend_conn::Dialed, BackendLease), ClientError> {
    let mut tried = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    while let Some(backend) = ctx.backends.select(&tried) {
        tried.push(backend.clone());
        let lease = BackendLease::new(backend.clone());
        let attempt = timeout(
            settings.backend_connect_timeout,
            dial(
                &backend,
                hello,
                ctx,
                settings.conn_buffer_size,
                settings.require_backend_tls,
            ),
        )
        .await;
        let reason = match attempt {
            Ok(Ok(d)) => return Ok((d, lease)),
            Ok(Err(DialError::Tls(detail))) => {
                return Err(ClientError::BackendTlsUnavailable {
                    backend: backend.addr.clone(),
                    detail,
                })
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "timed out after {} s",
                settings.backend_connect_timeout.as_secs()
            ),
        };
        if backend.mark_unhealthy(&reason) {
            warn!(backend = %backend.addr, %reason, "backend marked down after a failed connection");
        }
        failures.push(format!("{} ({reason})", backend.addr));
    }
    if failures.is_empty() {
        Err(ClientError::NoBackendAvailable {
            detail: ctx.backends.unavailable_reason(),
        })
    } else {
        Err(ClientError::BackendConnectFailed {
            attempts: failures.join("; "),
        })
    }
}

fn is_refused_command(c: u8) -> bool {
    matches!(
        c,
        cmd::BINLOG_DUMP
            | cmd::BINLOG_DUMP_GTID
            | cmd::REGISTER_SLAVE
            | cmd::TABLE_DUMP
            | cmd::CONNECT_OUT
            | cmd::DAEMON
            | cmd::CONNECT
            | cmd::DELAYED_INSERT
            | cmd::SHUTDOWN
    )
}

impl Session {
    fn deprecate_eof(&self) -> bool {
        self.capabilities & cap::DEPRECATE_EOF != 0
    }

    fn backend_addr(&self) -> String {
        self.lease.backend().addr.clone()
    }

    fn backend_lost(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::BackendLost {
            backend: self.backend_addr(),
            detail: e.to_string(),
        }
    }

    async fn serve(&mut self, ctx: &ProxyContext) -> End {
        loop {
            if self.client.buffered().len() < HEADER_LEN + 1 {
                tokio::select! {
                    biased;
                    _ = ctx.force_close.cancelled() => return End::Shutdown,
                    _ = ctx.closing.cancelled(), if self.txn.at_boundary() => return End::Shutdown,
                    r = self.client.fill() => match r {
                        Ok(0) => return End::ClientGone("closed".into()),
                        Ok(_) => continue,
                        Err(e) => return End::ClientGone(e.to_string()),
                    },
                }
            }
            let step = tokio::select! {
                biased;
                _ = ctx.force_close.cancelled() => return End::Shutdown,
                r = self.execute_cmd(ctx) => r,
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => return End::ClientQuit,
                Err(end) => return end,
            }
        }
    }

    async fn execute_cmd(&mut self, ctx: &ProxyContext) -> Result<Flow, End> {
        let (len, _) = parse_header(self.client.buffered());
        let head_len = len.min(6);
        if let Err(e) = self.client.fill_to(HEADER_LEN + head_len).await {
            return Err(End::ClientGone(e.to_string()));
        }
        let mut head = [0u8; 6];
        head[..head_len]
            .copy_from_slice(&self.client.buffered()[HEADER_LEN..HEADER_LEN + head_len]);
        let command = head[0];
        match command {
            cmd::QUIT => {
                let _ = self.backend.write_packet(0, &[cmd::QUIT]).await;
                return Ok(Flow::Quit);
            }
            cmd::CHANGE_USER => return self.change_user(len).await,
            c if is_refused_command(c) => return self.refuse(len, c).await,
            cmd::QUERY | cmd::STMT_PREPARE => {
                let buf = &self.client.buffered()[HEADER_LEN + 1..];
                let n = buf.len().min(len.saturating_sub(1)).min(STATEMENT_PREFIX);
                self.statement.clear();
                self.statement.extend_from_slice(&buf[..n]);
            }
            cmd::STMT_CLOSE if head_len >= 5 => {
                let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
                self.prepared.remove(&id);
            }
            _ => {}
        }
        let mut seq = 0u8;
        match relay(
            &mut self.client,
            &mut self.backend,
            &mut OnePacket,
            &mut seq,
        )
        .await
        {
            Ok(()) => {}
            Err(RelayError::Source(e)) => return Err(End::ClientGone(e.to_string())),
            Err(RelayError::Dest(e)) => {
                let err = self.backend_lost(e);
                return Err(tell(&mut self.client, seq, err).await);
            }
            Err(RelayError::Protocol(e)) => {
                return Err(End::ClientGone(format!("client broke the protocol: {e}")))
            }
        }
        let Some(shape) = Shape::of(command) else {
            self.txn.after_command(&head[..head_len], None, true);
            return Ok(Flow::Continue);
        };
        let mut obs = ResponseObserver::new(shape, self.deprecate_eof());
        loop {
            match relay(&mut self.backend, &mut self.client, &mut obs, &mut seq).await {
                Ok(()) => {}
                Err(RelayError::Source(e)) => {
                    let err = self.backend_lost(e);
                    return Err(tell(&mut self.client, seq, err).await);
                }
                Err(RelayError::Dest(e)) => return Err(End::ClientGone(e.to_string())),
                Err(RelayError::Protocol(detail)) => {
                    let err = ClientError::BackendMalformed {
                        backend: self.backend_addr(),
                        detail,
                    };
                    warn!(conn = self.id, backend = %self.backend_addr(), error = %err, "closing session");
                    return Err(tell(&mut self.client, seq, err).await);
                }
            }
            if !obs.local_infile {
                break;
            }
            match relay(
                &mut self.client,
                &mut self.backend,
                &mut UntilEmpty,
                &mut seq,
            )
            .await
            {
                Ok(()) => obs.resume_after_infile(),
                Err(RelayError::Dest(e)) => {
                    let err = self.backend_lost(e);
                    return Err(tell(&mut self.client, seq, err).await);
                }
                Err(e) => return Err(End::ClientGone(format!("{e:?}"))),
            }
        }
        self.txn
            .after_command(&head[..head_len], obs.status, obs.error.is_none());
        self.entry.set_in_transaction(self.txn.in_transaction());
        if let Some(id) = obs.prepared_id {
            self.prepared.insert(id, digest(&self.statement).into());
        }
        if let Some(code) = obs.error {
            self.log_query_error(ctx, head[0], &head[..head_len], code, &obs.error_message);
        }
        Ok(Flow::Continue)
    }

    fn log_query_error(
        &self,
        ctx: &ProxyContext,
        command: u8,
        head: &[u8],
        code: u16,
        message: &str,
    ) {
        let digest_text: String = match command {
            cmd::QUERY | cmd::STMT_PREPARE => digest(&self.statement),
            cmd::STMT_EXECUTE if head.len() >= 5 => {
                let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
                self.prepared
                    .get(&id)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        let backend = self.backend_addr();
        ctx.query_errors.record(&QueryError {
            conn: self.id,
            user: &self.user,
            backend: &backend,
            command: cmd::name(command),
            code,
            message,
            digest: &digest_text,
        });
    }

    /// Reads a whole control packet from the client (small by nature).
    async fn read_control(&mut self, len: usize) -> Result<bytes::BytesMut, End> {
        if len > CONTROL_PACKET_LIMIT {
            return Err(End::ClientGone(format!(
                "control packet of {len} bytes is over the {CONTROL_PACKET_LIMIT}-byte limit"
            )));
        }
        match self.client.read_packet(CONTROL_PACKET_LIMIT).await {
            Ok((_, p)) => Ok(p),
            Err(e) => Err(End::ClientGone(e.to_string())),
        }
    }

    async fn refuse(&mut self, len: usize, command: u8) -> Result<Flow, End> {
        self.read_control(len).await?;
        let err = ClientError::UnsupportedCommand {
            command: cmd::name(command),
        };
        debug!(conn = self.id, client = %self.peer, command = cmd::name(command), "refused command");
        if let Err(e) = self.client.write_packet(1, &err.to_packet().encode()).await {
            return Err(End::ClientGone(e.to_string()));
        }
        Ok(Flow::Continue)
    }

    /// COM_CHANGE_USER: the client's auth data was computed against the proxy's scramble, so
    /// it is dropped and the backend is made to ask again with its own.
    async fn change_user(&mut self, len: usize) -> Result<Flow, End> {
        let packet = self.read_control(len).await?;
        let mut cu = match ChangeUser::parse(&packet, self.capabilities) {
            Ok(cu) => cu,
            Err(e) => {
                let err = ClientError::HandshakeMalformed {
                    reason: format!("COM_CHANGE_USER: {e}"),
                };
                return Err(tell(&mut self.client, 1, err).await);
            }
        };
        let new_user = String::from_utf8_lossy(&cu.user).into_owned();
        cu.auth_data.clear();
        cu.auth_plugin = Some(UNKNOWN_AUTH_PLUGIN.into());
        cu.collation.get_or_insert(u16::from(self.collation));
        if let Err(e) = self
            .backend
            .write_packet(0, &cu.encode(self.capabilities))
            .await
        {
            let err = self.backend_lost(e);
            return Err(tell(&mut self.client, 1, err).await);
        }
        match relay_auth(&mut self.client, &mut self.backend, 0).await {
            Ok(AuthOutcome::Ok(status)) => {
                self.entry.set_identity(&new_user, &self.backend_addr());
                self.user = new_user;
                self.txn
                    .after_command(&[cmd::CHANGE_USER], Some(status), true);
                Ok(Flow::Continue)
            }
            // The backend closes the connection after a failed change-user.
            Ok(AuthOutcome::Denied(_)) => Err(End::AuthDenied),
            Err(AuthRelayError::Client(e)) => Err(End::ClientGone(e.to_string())),
            Err(AuthRelayError::Backend(e)) => {
                let err = self.backend_lost(e);
                Err(tell(&mut self.client, 1, err).await)
            }
        }
    }

    async fn close(&mut self) {
        let _ = timeout(std::time::Duration::from_secs(1), async {
            let _ = self.backend.write_packet(0, &[cmd::QUIT]).await;
            self.backend.shutdown().await;
        })
        .await;
    }
}
