//! A backend connected and greeted before the client is: the proxy greets the client with that
//! backend's scramble and auth plugin, so the client's login answers the backend directly and
//! costs no auth switch (one round trip fewer with the client and with the backend).
//!
//! A connect that never says anything would cost a backend connection this way, so at most
//! [`MAX_EARLY`] are open at once; past that a client is greeted with the proxy's own scramble
//! and its backend is dialed after its login, so a flood of bare connects costs backends a
//! small, fixed number of connections.

use super::super::backend_conn::{answer_greeting, greet, AuthAnswer, Dialed};
use super::super::client_handshake::ClientHello;
use super::super::context::{ProxyContext, SessionSettings};
use super::super::error::ClientError;
use super::super::migrate::credential::ProofCapture;
use crate::balance::{Backend, BackendLease};
use crate::protocol::handshake::Greeting;
use crate::protocol::PacketConn;
use crate::timer::timeout;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::debug;

/// Backend connections opened before a client's login, at once, per process.
pub const MAX_EARLY: usize = 16;
static EARLY_SLOTS: Semaphore = Semaphore::const_new(MAX_EARLY);

pub(super) struct Early {
    /// Held until the connection is handed to the login or signed off.
    slot: Option<SemaphorePermit<'static>>,
    /// Taken when the client's login goes to it; otherwise the drop signs the backend off.
    conn: Option<PacketConn>,
    greeting: Greeting,
    backend: Arc<Backend>,
    /// Counts the session against the backend from the start, so a burst of new clients
    /// spreads; taken with `conn`.
    lease: Option<BackendLease>,
    sign_off_limit: Duration,
    /// Signs the connection off without a trace on MySQL/MariaDB (see `health::sign_off`).
    account: crate::config::ServiceAccount,
}

/// What a forwarded login produced: the connection awaiting the backend's answer, its lease,
/// and what the login proves so far.
pub(super) type Answered = (Dialed, BackendLease, ProofCapture);

/// A backend that could not be dialed, and why.
pub(super) type Failed = (Arc<Backend>, String);

impl Early {
    /// Connects to the backend a new session would get and reads its greeting. A failure is
    /// returned (the backend and why) for the usual path after the client's login, which
    /// reports it like any failed dial, tries the others, and names it if all fail; a client
    /// that leaves before logging in marks no backend down. `None`: no candidate at all.
    pub(super) async fn connect(
        ctx: &ProxyContext,
        settings: &SessionSettings,
        origin: &crate::balance::policy::Origin,
    ) -> Option<Result<Early, Failed>> {
        let slot = EARLY_SLOTS.try_acquire().ok()?;
        let backend = ctx
            .selector
            .select_for(&super::not_for_new_sessions(ctx, settings), origin)?;
        let lease = BackendLease::new(backend.clone());
        let limit = settings.backend_connect_timeout;
        let reason = match timeout(limit, greet(&backend, settings.conn_buffer_size)).await {
            Ok(Ok((conn, greeting))) => {
                return Some(Ok(Early {
                    slot: Some(slot),
                    conn: Some(conn),
                    greeting,
                    backend,
                    lease: Some(lease),
                    sign_off_limit: limit,
                    account: settings.service_account.clone(),
                }))
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {} s", limit.as_secs()),
        };
        Some(Err((backend, reason)))
    }

    /// The scramble and plugin to greet the client with.
    pub(super) fn greeting(&self) -> (Vec<u8>, String) {
        (
            self.greeting.scramble.clone(),
            self.greeting.auth_plugin.clone(),
        )
    }

    /// How long the connection may wait for the client's login. MySQL and MariaDB close a
    /// handshake left unanswered for connect_timeout (10 s by default) and count it against the
    /// proxy's host for max_connect_errors, so a slow or silent client must not hold it that
    /// long: after this the connection is signed off and the login, when it comes, dials afresh.
    pub(super) fn backend(&self) -> &Backend {
        &self.backend
    }

    pub(super) fn hold(settings: &SessionSettings) -> Duration {
        (settings.client_handshake_timeout / 2).min(Duration::from_secs(5))
    }

    /// Sends the client's login to the backend as the client wrote it. `Ok(None)` means this
    /// connection could not take it (the backend closed it while the client was slow, say)
    /// and the session should dial afresh; an `Err` is the client's answer.
    pub(super) async fn answer(
        mut self,
        hello: &ClientHello,
        ctx: &ProxyContext,
        settings: &SessionSettings,
    ) -> Result<Option<Answered>, ClientError> {
        let (Some(conn), Some(lease)) = (self.conn.take(), self.lease.take()) else {
            return Ok(None);
        };
        self.slot = None;
        let forwarded = answer_greeting(
            conn,
            &self.greeting,
            &self.backend,
            hello.into(),
            AuthAnswer::Forward,
            ctx,
            settings.require_backend_tls,
        );
        match timeout(settings.backend_connect_timeout, forwarded).await {
            Ok(Ok(dialed)) => {
                ctx.metrics.get_backend_ok.inc();
                let plugin = hello
                    .response
                    .auth_plugin
                    .as_deref()
                    .unwrap_or(&self.greeting.auth_plugin);
                let proof = ProofCapture::answered_greeting(
                    plugin,
                    &self.greeting.scramble,
                    &hello.response.auth_data,
                );
                Ok(Some((dialed, lease, proof)))
            }
            Ok(Err(e)) if !e.origin().retryable() => {
                Err(super::tls_unavailable(ctx, &self.backend, e.to_string()))
            }
            Ok(Err(e)) => {
                debug!(backend = %self.backend.addr, error = %e, "connection opened before the login is gone; dialing again");
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        // Not used (the client left, failed its handshake, or the proxy is closing): end the
        // backend's handshake as the health probe does, leaving no trace (hanging up would
        // count towards MySQL/MariaDB's max_connect_errors).
        // Without a runtime (the worker itself is being torn down) the socket just closes.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(mut conn) = self.conn.take() {
            let greeting = self.greeting.clone();
            let limit = self.sign_off_limit;
            let slot = self.slot.take();
            let account = std::mem::take(&mut self.account);
            runtime.spawn(async move {
                let sign_off = crate::health::sign_off(&mut conn, &greeting, &account);
                let _ = timeout(limit, sign_off).await;
                drop(slot);
            });
        }
    }
}
