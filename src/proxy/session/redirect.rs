//! Moving this session to another backend: at a transaction boundary on request (drain,
//! unhealthy or removed backend, fail-backend-list, imbalance, the API), and after its
//! backend failed, from the state the proxy tracked.

use super::move_error::{Left, MoveError, NotMoved};
use super::outcome::Fate;
use super::stmt_ids::StmtIds;
use super::{tell, End, Flow, Session};
use crate::balance::policy::{route_allows, route_for};
use crate::balance::{Backend, BackendLease};
use crate::protocol::conn::HEADER_LEN;
use crate::protocol::constants::{cap, cmd, status};
use crate::proxy::backend_conn::{dial, finish_auth, AuthAnswer, Dialed, Identity};
use crate::proxy::context::ProxyContext;
use crate::proxy::error::ClientError;
use crate::proxy::error::Next;
use crate::proxy::migrate::service::{login_for, Login};
use crate::proxy::migrate::{restore, sql, tidb};
use crate::proxy::registry::Redirect;
use crate::proxy::txn::TxnState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// After a failed move, further requests are ignored for this long (no retry storm).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Where the state of the new session comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateSource {
    /// The old backend is alive: read the state from it.
    Live,
    /// The old backend is gone: replay what the proxy tracked.
    Tracked,
}

impl Session {
    /// Acts on a pending redirect request when the session is at a transaction boundary.
    pub(super) async fn redirect_if_requested(&mut self, ctx: &ProxyContext) {
        if !self.txn.at_boundary() || !self.entry.has_redirect() {
            return;
        }
        let Some(req) = self.entry.take_redirect() else {
            return;
        };
        if self.redirect_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let _ = Box::pin(self.move_now(ctx, &req, StateSource::Live)).await;
    }

    /// Moves the session and records the outcome: the new backend, or why it did not move.
    pub(crate) async fn move_now(
        &mut self,
        ctx: &ProxyContext,
        req: &Redirect,
        source: StateSource,
    ) -> Result<String, MoveError> {
        let from = self.backend_addr();
        let method = tidb::move_method(&self.lease.backend().info().server_version);
        // Many sessions asked at once (a drain) take turns in bounded parallel; the time
        // reported is the move's own, from when its turn came.
        let slot = ctx.move_gate.slot().await;
        let started = Instant::now();
        let outcome = self
            .move_to(ctx, req, source)
            .await
            .map_err(|(to, why)| MoveError::new(to, source, why));
        let secs = started.elapsed().as_secs_f64();
        drop(slot);
        let m = &ctx.metrics;
        match outcome {
            Ok(to) => {
                self.redirect_retry_at = None;
                self.entry.set_move_blocked(None);
                m.migrate_total
                    .with_label_values(&[&from, &to, req.reason, "succeed"])
                    .inc();
                m.migrate_method
                    .with_label_values(&[method, "succeed"])
                    .inc();
                m.migrate_duration
                    .with_label_values(&[&from, &to, "succeed"])
                    .observe(secs);
                info!(conn = self.id, %from, %to, reason = req.reason, method, ms = (secs * 1000.0) as u64, "session moved");
                ctx.events.push(
                    "migration",
                    format!("session {} moved {from} -> {to} ({})", self.id, req.reason),
                );
                Ok(to)
            }
            Err(e) => {
                self.redirect_retry_at = Some(Instant::now() + RETRY_AFTER);
                let to = e.to_label();
                m.migrate_total
                    .with_label_values(&[&from, to, req.reason, "fail"])
                    .inc();
                m.migrate_method.with_label_values(&[method, "fail"]).inc();
                m.migrate_duration
                    .with_label_values(&[&from, to, "fail"])
                    .observe(secs);
                let why = e.why.to_string();
                match e.left() {
                    Left::Stays => {
                        warn!(conn = self.id, %from, %to, reason = req.reason, method, error = %why, "session not moved")
                    }
                    Left::StaysBroken => {
                        warn!(conn = self.id, %from, %to, reason = req.reason, method, error = %why, "session not moved; its backend connection failed while its state was read")
                    }
                    Left::Closed => {
                        warn!(conn = self.id, %from, %to, reason = req.reason, method, error = %why, "session not moved; its backend is gone, so it closes")
                    }
                }
                self.entry.set_move_blocked(Some(&why));
                Err(e)
            }
        }
    }

    /// A healthy backend other than the current one: never the same address, even when the
    /// backend list holds it again under a new entry (removed and re-added).
    fn pick_target(&self, ctx: &ProxyContext, req: &Redirect) -> Option<Arc<Backend>> {
        let current = self.lease.backend().clone();
        let mut same_place: Vec<Arc<Backend>> = ctx
            .backends
            .snapshot()
            .iter()
            .filter(|b| b.addr == current.addr)
            .cloned()
            .collect();
        same_place.push(current.clone());
        // Never out of the session's namespace group, whoever asks.
        let settings = ctx.settings();
        let group = super::namespace::group_of(&settings, &self.user);
        let outside = super::namespace::outside(ctx, &settings, &group);
        if req
            .target
            .as_ref()
            .is_some_and(|t| outside.iter().any(|b| &b.addr == t))
        {
            return None;
        }
        same_place.extend(outside);
        match &req.target {
            Some(addr) if *addr == current.addr => None,
            Some(addr) => ctx
                .backends
                .snapshot()
                .iter()
                .find(|b| &b.addr == addr && b.is_healthy())
                .cloned(),
            None => ctx.selector.select_for(&same_place, &self.entry.origin()),
        }
    }

    async fn move_to(
        &mut self,
        ctx: &ProxyContext,
        req: &Redirect,
        source: StateSource,
    ) -> Result<String, (Option<String>, NotMoved)> {
        if let Some(b) = self.tracked.blocker() {
            return Err((None, NotMoved::Pinned(b)));
        }
        // State the proxy could not record whole is never replayed as if it were.
        if let (StateSource::Tracked, Some(why)) = (source, self.tracked.incomplete) {
            return Err((None, NotMoved::StateIncomplete(why)));
        }
        // A routing rule outranks an operator's or the balancer's target. The route view's
        // policy has `routing-rule`'s label groups for the current backends.
        let policy = ctx.backends.route_view().policy.clone();
        let rule = route_for(&policy, &self.entry.origin());
        if let (Some(addr), Some(rule)) = (&req.target, rule) {
            if !route_allows(&policy, &self.entry.origin(), addr) {
                return Err((Some(addr.clone()), NotMoved::RoutingRule(rule.name.clone())));
            }
        }
        let settings = ctx.settings();
        let group = super::namespace::group_of(&settings, &self.user);
        if let Some(addr) = &req.target {
            if super::namespace::outside(ctx, &settings, &group)
                .iter()
                .any(|b| &b.addr == addr)
            {
                let group = crate::balance::routes_namespace::Namespaces::describe(&group);
                return Err((Some(addr.clone()), NotMoved::NamespaceGroup(group)));
            }
        }
        let Some(target) = self.pick_target(ctx, req) else {
            let why = match rule {
                Some(r) => NotMoved::NoBackendInRule(r.name.clone()),
                None => NotMoved::NoBackend,
            };
            return Err((req.target.clone(), why));
        };
        let to = target.addr.clone();
        let (dialed, ids) = self
            .open_on(ctx, &target, source)
            .await
            .map_err(|e| (Some(to.clone()), e))?;
        // The client negotiated features with the old backend; the new one must match.
        let mask = !(cap::SSL | cap::CONNECT_WITH_DB);
        if dialed.capabilities & mask != self.capabilities & mask {
            return Err((Some(to), NotMoved::Capabilities));
        }
        let old = std::mem::replace(&mut self.backend, dialed.conn);
        if let Some(pairs) = ids {
            self.stmt_ids = StmtIds::rebuilt(pairs);
        }
        self.capabilities = dialed.capabilities;
        self.lease = BackendLease::new(target.clone());
        self.entry.set_identity(&self.user, &target.addr);
        tokio::spawn(async move {
            let mut old = old;
            let _ = crate::timer::timeout(Duration::from_secs(1), async {
                let _ = old.write_packet(0, &[cmd::QUIT]).await;
                old.shutdown().await;
            })
            .await;
        });
        Ok(to)
    }

    fn tracked_statements(&self) -> Result<Vec<String>, NotMoved> {
        if let Some(why) = self.tracked.incomplete {
            return Err(NotMoved::StateIncomplete(why));
        }
        Ok(self
            .tracked
            .settings
            .statements()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// Logs in on `target` as the session's user and rebuilds the session state there.
    /// Returns the connection and, when prepared statements were prepared again, each
    /// client id with its id on the new backend.
    async fn open_on(
        &mut self,
        ctx: &ProxyContext,
        target: &Arc<Backend>,
        source: StateSource,
    ) -> Result<(Dialed, Option<Vec<(u32, u32)>>), NotMoved> {
        let settings = ctx.settings();
        let deprecate_eof = self.deprecate_eof();
        // Log in without a database: the old one may be gone; the state replay sets it.
        let identity = self.identity.response();
        let who = Identity {
            response: &identity,
            capabilities: self.client_capabilities,
        };
        let old_version = self.lease.backend().info().server_version;
        let open = |answer| {
            dial(
                target,
                who,
                answer,
                ctx,
                settings.conn_buffer_size,
                settings.require_backend_tls,
            )
        };
        if tidb::is_tidb(&old_version) {
            if source == StateSource::Tracked {
                return Err(NotMoved::TidbBackendGone);
            }
            let states = tidb::show(&mut self.backend, deprecate_eof)
                .await
                .map_err(NotMoved::ExportTidb)?;
            let answer = AuthAnswer::SessionToken(&states.token);
            let mut d = open(answer).await.map_err(NotMoved::Dial)?;
            finish_auth(&mut d.conn, answer)
                .await
                .map_err(NotMoved::Auth)?;
            let de = d.capabilities & cap::DEPRECATE_EOF != 0;
            sql::exec(&mut d.conn, &tidb::set_statement(&states.json), de)
                .await
                .map_err(NotMoved::SetSessionStates)?;
            return Ok((d, None));
        }
        let login = match &self.login {
            Some(l) => l.clone(),
            None => {
                let l = login_for(
                    ctx,
                    target,
                    &self.identity.user,
                    &self.proof,
                    &settings.service_account,
                    settings.backend_connect_timeout,
                )
                .await
                .map_err(NotMoved::Login)?;
                self.login = Some(l.clone());
                l
            }
        };
        let statements: Vec<String> = match source {
            // Nothing the session ran could change its state unseen: what the proxy tracked
            // is all of it, and reading the server's variables (the dearest step of a move)
            // is skipped.
            StateSource::Live if !self.tracked.touched && self.tracked.incomplete.is_none() => {
                self.tracked_statements()?
            }
            StateSource::Live => {
                match restore::read_live_state(&mut self.backend, deprecate_eof).await {
                    // A move never drops state in silence: the session stays instead.
                    Ok((_, Some(gaps))) => return Err(NotMoved::StateGaps(gaps)),
                    Ok((s, None)) => s,
                    // A server without MariaDB's information_schema tables (MySQL): the
                    // statements the proxy tracked carry the state instead.
                    Err(sql::SqlError::Server(e)) => {
                        warn!(conn = self.id, error = %e, "session state not readable here; replaying the tracked SET/USE statements");
                        self.tracked_statements()?
                    }
                    Err(e) => return Err(NotMoved::ReadState(e)),
                }
            }
            StateSource::Tracked => self.tracked_statements()?,
        };
        let answer = match &login {
            Login::Native(s1) => AuthAnswer::Native(s1),
            Login::EmptyPassword => AuthAnswer::EmptyPassword,
        };
        let mut d = open(answer).await.map_err(NotMoved::Dial)?;
        finish_auth(&mut d.conn, answer)
            .await
            .map_err(NotMoved::Auth)?;
        let de = d.capabilities & cap::DEPRECATE_EOF != 0;
        let ids = restore::replay(&mut d.conn, &statements, &self.tracked, de).await?;
        Ok((d, Some(ids)))
    }
}

/// The error that tells the client what is proven about its command.
pub(super) fn failure_error(
    backend: String,
    fate: Fate,
    detail: String,
    next: Next,
) -> ClientError {
    match fate {
        Fate::RolledBack => ClientError::TxnRolledBack {
            backend,
            detail,
            next,
        },
        Fate::NotExecuted => ClientError::NotExecuted {
            backend,
            detail,
            next,
        },
        Fate::Unknown => ClientError::OutcomeUnknown {
            backend,
            detail,
            next,
        },
    }
}

impl Session {
    /// A move is pending, the session is in a transaction, and the client starts another
    /// one: commit the open transaction here (BEGIN would commit it anyway), move, and let
    /// the BEGIN run on the new backend. Returns true when the BEGIN was answered here instead
    /// (the COMMIT failed and its error went to the client).
    pub(super) async fn commit_then_move(
        &mut self,
        ctx: &ProxyContext,
        len: usize,
    ) -> Result<bool, End> {
        let de = self.deprecate_eof();
        match sql::exec_status(&mut self.backend, "COMMIT", de).await {
            Ok(status) => {
                self.txn.after_command(&[cmd::QUERY], Some(status), true);
                self.entry.set_in_transaction(false);
                if let Some(req) = self.entry.take_redirect() {
                    let _ = Box::pin(self.move_now(ctx, &req, StateSource::Live)).await;
                }
                Ok(false)
            }
            Err(sql::SqlError::Server(e)) => {
                self.client.consume(HEADER_LEN + len);
                if let Err(io) = self.client.write_packet(1, &e.encode()).await {
                    return Err(End::ClientGone(io.to_string()));
                }
                Ok(true)
            }
            // The COMMIT the proxy sent for the client's BEGIN may or may not have committed.
            Err(e) => {
                self.client.consume(HEADER_LEN + len);
                let detail = format!("during the COMMIT that your BEGIN implies: {e}");
                // Rebuilt elsewhere: the client has its error for the BEGIN and goes on.
                match self
                    .after_backend_failure(ctx, 1, detail, Fate::Unknown)
                    .await?
                {
                    Flow::Continue => Ok(true),
                    Flow::Quit => Err(End::ClientQuit),
                }
            }
        }
    }

    /// The backend failed while a command was in flight. The client is told what is proven
    /// about its command (`fate`), and the session is rebuilt on another backend from the
    /// tracked state so it keeps working, or closed when that cannot be done whole.
    pub(super) async fn after_backend_failure(
        &mut self,
        ctx: &ProxyContext,
        seq: u8,
        detail: String,
        fate: Fate,
    ) -> Result<Flow, End> {
        let failed = self.backend_addr();
        // The new session has no transaction and the autocommit mode the client chose (its
        // SET autocommit is replayed): what the next failure is judged by.
        let autocommit = self.txn.status() & status::AUTOCOMMIT;
        self.txn = TxnState::default();
        self.txn.after_command(&[], Some(autocommit), true);
        self.entry.set_in_transaction(false);
        let req = Redirect {
            target: None,
            reason: "backend-failed",
        };
        // A TiDB session's state died with its TiDB: nothing to rebuild, no move to count.
        if self.state_lived_in_tidb() {
            info!(conn = self.id, backend = %failed, "session's TiDB went away with its state; the session ends");
            let err = ClientError::TidbStateLost {
                backend: failed,
                detail,
                in_flight: !matches!(fate, Fate::NotExecuted),
            };
            return Err(tell(&mut self.client, seq, err).await);
        }
        let next = match self.move_now(ctx, &req, StateSource::Tracked).await {
            Ok(to) => Next::MovedTo(to),
            Err(not_moved) => Next::Closed(not_moved.to_string()),
        };
        let moved = matches!(next, Next::MovedTo(_));
        let err = failure_error(failed, fate, detail, next);
        if moved {
            if let Err(e) = self
                .client
                .write_packet(seq, &err.to_packet().encode())
                .await
            {
                return Err(End::ClientGone(e.to_string()));
            }
            Ok(Flow::Continue)
        } else {
            Err(tell(&mut self.client, seq, err).await)
        }
    }

    /// TiDB keeps the session's state itself (the proxy tracks none for it), so once that TiDB
    /// is gone the session cannot be rebuilt elsewhere.
    pub(super) fn state_lived_in_tidb(&self) -> bool {
        tidb::is_tidb(&self.lease.backend().info().server_version)
    }

    /// The backend went away while the session was idle: rebuild it elsewhere before the
    /// client notices. Returns why that did not work, if it did not.
    pub(super) async fn rebuild_idle(&mut self, ctx: &ProxyContext) -> Result<String, MoveError> {
        let n = self.backend.buffered().len();
        self.backend.consume(n);
        if self.state_lived_in_tidb() {
            info!(conn = self.id, backend = %self.backend_addr(), "session's TiDB went away with its state; the session ends");
            return Err(MoveError::new(
                None,
                StateSource::Tracked,
                NotMoved::StateLivedInTidb,
            ));
        }
        let req = Redirect {
            target: None,
            reason: "backend-failed",
        };
        self.move_now(ctx, &req, StateSource::Tracked).await
    }
}
