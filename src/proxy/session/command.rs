//! The command loop of a session: relay each command and its response, track transaction
//! and session state, and handle the commands the proxy rewrites or refuses.

use super::outcome::{fate, InFlight};
use super::redirect::failure_error;
use super::reused::Reused;
use super::{tell, End, Flow, Session, STATEMENT_PREFIX};
use crate::protocol::conn::{parse_header, HEADER_LEN};
use crate::protocol::constants::{
    cap, cmd, CURSOR_TYPE_READ_ONLY, MAX_PAYLOAD, UNKNOWN_AUTH_PLUGIN,
};
use crate::protocol::handshake::ChangeUser;
use crate::proxy::backend_conn::{relay_auth_bounded, AuthOutcome, AuthRelayError};
use crate::proxy::context::ProxyContext;
use crate::proxy::digest::digest;
use crate::proxy::error::{ClientError, Next};
use crate::proxy::migrate::credential::ProofCapture;
use crate::proxy::migrate::state::{is_begin, MAX_TRACKED_TEXT};
use crate::proxy::query_log::QueryError;
use crate::proxy::relay::{relay, OnePacket, RelayError, UntilEmpty};
use crate::proxy::response::{ResponseObserver, Shape};
use crate::timer::timeout;
use tracing::{debug, warn};

/// A control packet the proxy must read whole (COM_CHANGE_USER, refused commands).
const CONTROL_PACKET_LIMIT: usize = 1 << 20;

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
    pub(crate) fn deprecate_eof(&self) -> bool {
        self.capabilities & cap::DEPRECATE_EOF != 0
    }

    pub(crate) fn backend_addr(&self) -> String {
        self.lease.backend().addr.clone()
    }

    /// The command in flight, for judging what a backend failure did to it.
    fn in_flight(&self, head: &[u8], len: usize) -> InFlight<'_> {
        let command = head.first().copied().unwrap_or(0);
        let text = match command {
            cmd::QUERY => Some(&self.statement[..]),
            cmd::STMT_EXECUTE | cmd::STMT_BULK_EXECUTE => cmd::statement_id(head)
                .and_then(|id| self.tracked.binary.get(&id))
                .map(|t| &t[..]),
            _ => None,
        };
        InFlight {
            command,
            text,
            whole: command != cmd::QUERY || len.saturating_sub(1) == self.statement.len(),
            multi_statements: self.capabilities & cap::MULTI_STATEMENTS != 0,
        }
    }

    /// Statement commands carry the client's id; the backend may know it by another.
    fn translate_statement_id(&mut self, head: &[u8]) {
        let Some(client) = cmd::statement_id(head) else {
            return;
        };
        if self.stmt_ids.is_identity() {
            return;
        }
        let backend = self.stmt_ids.backend_id(client);
        self.client.buffered_mut()[HEADER_LEN + 1..HEADER_LEN + 5]
            .copy_from_slice(&backend.to_le_bytes());
    }

    fn backend_lost(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::BackendLost {
            backend: self.backend_addr(),
            detail: e.to_string(),
        }
    }

    /// Rare paths (moves, rebuilds, COM_CHANGE_USER, failures) are boxed where they are
    /// awaited: a future is as large as its largest await, and an idle session would otherwise
    /// hold a migration's worth of state while it waits for its next command.
    pub(super) async fn serve(&mut self, ctx: &ProxyContext) -> End {
        let entry = self.entry.clone();
        loop {
            if ctx.is_force_closing() {
                return End::Shutdown;
            }
            if self.entry.close_requested() {
                return Box::pin(self.close_for_failover(ctx)).await;
            }
            self.redirect_if_requested(ctx).await;
            // On an io_uring worker, plain sockets go onto its ring (a moved session's new
            // backend connection too); TLS ones stay on epoll.
            self.client.stream_mut().adopt_uring();
            self.backend.stream_mut().adopt_uring();
            if self.client.buffered().len() < HEADER_LEN + 1 {
                let idle = self.txn.at_boundary();
                if idle && ctx.is_closing() {
                    return End::Shutdown;
                }
                tokio::select! {
                    biased;
                    // A move, a close or a shutdown phase: the loop's top sees which.
                    _ = entry.attention() => continue,
                    // A backend says nothing between commands: anything here means it is
                    // gone or killed the connection, so the session is rebuilt elsewhere
                    // before the client needs it. Looked at before the client, so a command
                    // that arrives with the news goes to the new backend.
                    r = self.backend.fill(), if idle => {
                        // Boxed: its failure's locals would otherwise sit in every idle
                        // session's future.
                        match Box::pin(self.after_backend_spoke(ctx, r)).await {
                            Some(end) => return end,
                            None => continue,
                        }
                    }
                    r = self.client.fill() => match r {
                        Ok(0) => return End::ClientGone("closed".into()),
                        Ok(_) => continue,
                        Err(e) => return End::ClientGone(e.to_string()),
                    },
                }
            }
            // Only a forced close interrupts a command; other requests wait for its end.
            let forced = async {
                while !ctx.is_force_closing() {
                    entry.attention().await;
                }
            };
            entry.set_executing(true);
            // On the heap for the command's duration only: the command's future (relays,
            // observer, timeouts) is the loop's largest by far, and inline it would be held by
            // every idle session too. A reused block spares each command a malloc and free.
            let step = tokio::select! {
                biased;
                _ = forced => return End::Shutdown,
                r = Reused::new(|| self.execute_cmd(ctx)) => r,
            };
            entry.set_executing(false);
            // The text of a long PREPARE or INIT_DB (up to 64 KiB) is not kept while waiting.
            if self.statement.capacity() > STATEMENT_PREFIX {
                self.statement = Vec::new();
            }
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => return End::ClientQuit,
                Err(end) => return end,
            }
        }
    }

    /// The backend spoke (or closed) between commands: the session is rebuilt elsewhere before
    /// the client needs it, or, if that fails, the client is told at its next command.
    async fn after_backend_spoke(
        &mut self,
        ctx: &ProxyContext,
        read: std::io::Result<usize>,
    ) -> Option<End> {
        let why = match read {
            Ok(0) => "the backend closed the connection".to_owned(),
            Ok(_) => "the backend ended the connection with an error".to_owned(),
            Err(e) => e.to_string(),
        };
        let not_moved = Box::pin(self.rebuild_idle(ctx)).await.err()?;
        let err = if not_moved.why.tidb_state_lost() {
            ClientError::TidbStateLost {
                backend: self.backend_addr(),
                detail: why,
                in_flight: false,
            }
        } else {
            ClientError::NotExecuted {
                backend: self.backend_addr(),
                detail: why,
                next: Next::Closed(not_moved.to_string()),
            }
        };
        Some(self.tell_on_next_command(ctx, err).await)
    }

    async fn execute_cmd(&mut self, ctx: &ProxyContext) -> Result<Flow, End> {
        let started = std::time::Instant::now();
        let (len, _) = parse_header(self.client.buffered());
        let head_len = len.min(6);
        if let Err(e) = self.client.fill_to(HEADER_LEN + head_len).await {
            return Err(End::client_read(e));
        }
        let mut head = [0u8; 6];
        head[..head_len]
            .copy_from_slice(&self.client.buffered()[HEADER_LEN..HEADER_LEN + head_len]);
        let command = head[0];
        if ctx.traffic.is_capturing() {
            let capture = crate::proxy::traffic::capture::record_command(&ctx.traffic, self, len);
            Box::pin(capture).await.map_err(End::client_read)?;
        }
        if command != cmd::QUERY {
            self.tracked.before_command(command, None);
        }
        match command {
            // The backend gets its QUIT when the session closes, once.
            cmd::QUIT => return Ok(Flow::Quit),
            cmd::CHANGE_USER => return Box::pin(self.change_user(ctx, len)).await,
            c if is_refused_command(c) => return self.refuse(len, c).await,
            cmd::QUERY | cmd::STMT_PREPARE | cmd::INIT_DB => {
                // Prepared statements and database names are kept whole for re-creating them
                // elsewhere; a query only as far as a digest or a SET needs.
                let limit = if command == cmd::QUERY {
                    STATEMENT_PREFIX
                } else {
                    MAX_TRACKED_TEXT
                };
                if len <= limit + 1 {
                    if let Err(e) = self.client.fill_to(HEADER_LEN + len).await {
                        return Err(End::client_read(e));
                    }
                }
                let buf = &self.client.buffered()[HEADER_LEN + 1..];
                let n = buf.len().min(len.saturating_sub(1)).min(limit);
                self.statement.clear();
                // Exact: a query's text then never takes more than STATEMENT_PREFIX.
                self.statement.reserve_exact(n);
                self.statement.extend_from_slice(&buf[..n]);
                if command == cmd::QUERY {
                    let whole = n == len.saturating_sub(1);
                    self.tracked
                        .before_command(command, whole.then_some(&self.statement[..]));
                }
                if command == cmd::QUERY
                    && self.txn.in_transaction()
                    && self.entry.has_redirect()
                    && is_begin(&self.statement)
                    && Box::pin(self.commit_then_move(ctx, len)).await?
                {
                    self.record(command, started, false);
                    return Ok(Flow::Continue);
                }
            }
            _ => {}
        }
        self.translate_statement_id(&head[..head_len]);
        if command == cmd::STMT_CLOSE && head_len >= 5 {
            let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            if let Some(prepared) = &mut self.prepared {
                prepared.remove(&id);
            }
            self.stmt_ids.on_closed(id);
        }
        let status_before = self.txn.status();
        // A command wholly read can be dropped and answered if the backend refuses it.
        let whole = len < MAX_PAYLOAD && self.client.buffered().len() >= HEADER_LEN + len;
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
            Err(RelayError::Source(e)) => return Err(End::client_read(e)),
            // A write that failed left the command incomplete: no server runs it.
            Err(RelayError::Dest(e)) => {
                let fate = fate(
                    status_before,
                    false,
                    &self.in_flight(&head[..head_len], len),
                );
                let detail = format!("sending your command failed: {e}");
                if whole {
                    self.client.consume(HEADER_LEN + len);
                    return Box::pin(self.after_backend_failure(ctx, 1, detail, fate)).await;
                }
                let next = Next::Closed("the rest of the command could not be passed on".into());
                let err = failure_error(self.backend_addr(), fate, detail, next);
                return Err(tell(&mut self.client, 1, err).await);
            }
            Err(RelayError::Protocol(e)) => {
                return Err(End::ClientGone(format!("client broke the protocol: {e}")))
            }
        }
        let Some(shape) = Shape::of(command) else {
            self.record(command, started, true);
            self.txn.after_command(&head[..head_len], None, true);
            self.track(command, &head[..head_len], len, None);
            return Ok(Flow::Continue);
        };
        let mut obs = ResponseObserver::new(shape, self.deprecate_eof());
        obs.cursor_requested =
            command == cmd::STMT_EXECUTE && head_len >= 6 && head[5] & CURSOR_TYPE_READ_ONLY != 0;
        if shape == Shape::Prepare && !self.stmt_ids.is_identity() {
            obs.ids = Some(std::mem::take(&mut self.stmt_ids));
        }
        loop {
            let relayed = relay(&mut self.backend, &mut self.client, &mut obs, &mut seq).await;
            if let Some(ids) = obs.ids.take() {
                self.stmt_ids = ids;
            }
            match relayed {
                Ok(()) => {}
                Err(RelayError::Source(e)) => {
                    let fate = fate(status_before, true, &self.in_flight(&head[..head_len], len));
                    let detail = format!("its answer was cut off: {e}");
                    return Box::pin(self.after_backend_failure(ctx, seq, detail, fate)).await;
                }
                Err(RelayError::Dest(e)) => return Err(End::ClientGone(e.to_string())),
                Err(RelayError::Protocol(e)) => {
                    let err = ClientError::BackendMalformed {
                        backend: self.backend_addr(),
                        detail: e.to_string(),
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
                    let fate = fate(status_before, true, &self.in_flight(&head[..head_len], len));
                    let detail = format!("passing on your LOAD DATA LOCAL file failed: {e}");
                    let next = Next::Closed("the upload could not be finished".into());
                    let err = failure_error(self.backend_addr(), fate, detail, next);
                    return Err(tell(&mut self.client, seq, err).await);
                }
                Err(RelayError::Source(e)) => return Err(End::client_read(e)),
                Err(e) => return Err(End::ClientGone(format!("{e:?}"))),
            }
        }
        let ok = obs.error.is_none();
        self.record(command, started, ok);
        self.txn.after_command(&head[..head_len], obs.status, ok);
        if ok {
            self.track(command, &head[..head_len], len, obs.prepared_id);
        }
        self.entry.set_in_transaction(self.txn.in_transaction());
        if let Some(id) = obs.prepared_id {
            self.prepared
                .get_or_insert_default()
                .insert(id, digest(&self.statement).into());
        }
        if let Some(code) = obs.error {
            self.log_query_error(ctx, head[0], &head[..head_len], code, &obs.error_message);
        }
        Ok(Flow::Continue)
    }

    /// The session outstayed failover-timeout on a failed backend: drop the backend now and
    /// answer the client's next command with the reason.
    async fn close_for_failover(&mut self, ctx: &ProxyContext) -> End {
        let err = ClientError::FailoverTimeout {
            backend: self.backend_addr(),
            secs: ctx.settings().failover_timeout.as_secs(),
        };
        let _ = self.backend.write_packet(0, &[cmd::QUIT]).await;
        self.backend.shutdown().await;
        self.tell_on_next_command(ctx, err).await
    }

    /// The session cannot go on: the client, which is waiting for nothing, is told why when it
    /// sends its next command (an unsolicited packet would break its protocol state).
    pub(super) async fn tell_on_next_command(
        &mut self,
        ctx: &ProxyContext,
        err: ClientError,
    ) -> End {
        while self.client.buffered().len() < HEADER_LEN {
            tokio::select! {
                _ = ctx.force_close.cancelled() => return End::Shutdown,
                r = self.client.fill() => match r {
                    Ok(0) | Err(_) => return End::ClientGone("closed".into()),
                    Ok(_) => {}
                },
            }
        }
        tell(&mut self.client, 1, err).await
    }

    /// Updates the state the proxy keeps for rebuilding the session elsewhere.
    fn track(&mut self, command: u8, head: &[u8], len: usize, prepared_id: Option<u32>) {
        let full = len.saturating_sub(1) == self.statement.len();
        match command {
            cmd::QUERY => self.tracked.after_query(&self.statement, full),
            cmd::INIT_DB if full => self.tracked.after_init_db(&self.statement),
            cmd::STMT_PREPARE => {
                if let Some(id) = prepared_id {
                    self.tracked.after_prepare(id, &self.statement, full);
                }
            }
            cmd::STMT_CLOSE if head.len() >= 5 => {
                self.tracked
                    .after_close(u32::from_le_bytes([head[1], head[2], head[3], head[4]]));
            }
            cmd::RESET_CONNECTION => {
                self.tracked.reset_keeping_database();
                self.stmt_ids = Default::default();
            }
            _ => {}
        }
    }

    fn record(&mut self, command: u8, started: std::time::Instant, ok: bool) {
        let secs = started.elapsed().as_secs_f64();
        // From the session's own clock reading: no second clock read per query.
        let age = started.saturating_duration_since(self.born);
        self.lease
            .backend()
            .metrics
            .observe_query_age(age.as_secs_f64());
        let traffic = self.backend.take_traffic();
        self.lease
            .backend()
            .metrics
            .record(command, secs, ok, traffic);
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
                    .as_ref()
                    .and_then(|p| p.get(&id))
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
    async fn change_user(&mut self, ctx: &ProxyContext, len: usize) -> Result<Flow, End> {
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
        let database = cu.database.clone();
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
        // Bounded like the first login: a backend that stops answering cannot hold the client.
        let settings = ctx.settings();
        let auth = relay_auth_bounded(
            &mut self.client,
            &mut self.backend,
            0,
            ProofCapture::default(),
            &settings,
        )
        .await;
        match auth {
            Ok(AuthOutcome::Ok(status, proof)) => {
                self.entry.set_identity(&new_user, &self.backend_addr());
                self.identity.user = new_user.as_bytes().into();
                self.user = new_user;
                self.proof = proof;
                self.login = None;
                self.tracked.reset();
                self.stmt_ids = Default::default();
                if !database.is_empty() {
                    self.tracked.after_init_db(&database);
                }
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

    /// Ends the backend session with a QUIT. No `shutdown` call: the server closes its side on
    /// the QUIT and dropping the socket closes ours; short sessions pay for every system call.
    pub(super) async fn close(&mut self) {
        let _ = timeout(
            std::time::Duration::from_secs(1),
            self.backend.write_packet(0, &[cmd::QUIT]),
        )
        .await;
    }
}
