//! What every session shares: settings read at session start, TLS, the backend selector
//! (through its trait), the live session count, and the shutdown tokens.

use super::query_log::QueryErrorLog;
use super::registry::Registry;
use crate::balance::policy::{Mode, Policy, Routing};
use crate::balance::{BackendSelector, BackendSet};
use crate::config::Config;
use crate::events::EventLog;
use crate::protocol::constants::cap;
use crate::protocol::stream::TlsContext;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A session moved for balance is left alone this long, and no session moves back along the
/// same pair of backends within it, so sessions never ping-pong.
pub const MOVE_HOLD: Duration = Duration::from_secs(30);

/// Session settings derived from the config; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub max_connections: u64,
    pub conn_buffer_size: usize,
    pub client_handshake_timeout: Duration,
    /// `None` when the client may take as long as it likes between the bytes of a command.
    pub client_read_timeout: Option<Duration>,
    pub backend_connect_timeout: Duration,
    pub require_backend_tls: bool,
    pub service_account: crate::config::ServiceAccount,
    pub fail_backend_list: Vec<String>,
    pub failover_timeout: Duration,
    /// The balancing policy, from `[balance]`, `labels` and the failover keys.
    pub policy: Policy,
    /// Every client connection starts with a PROXY protocol v2 header.
    pub proxy_protocol_v2: bool,
    /// Backend connections start with a PROXY v2 header naming the client.
    pub backend_proxy_header: bool,
    /// Who may send that header (`[proxy] proxy-protocol-networks`).
    pub proxy_protocol_networks: crate::config::networks::TrustedNetworks,
    /// Connections from one IP still in their handshake; 0 = no limit.
    pub max_handshakes_per_source: u64,
    /// `[[namespace]]`: which backends a login's user may use.
    pub namespaces: Arc<crate::balance::routes_namespace::Namespaces>,
}

impl SessionSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_connections: c.proxy.max_connections,
            conn_buffer_size: c.proxy.conn_buffer_size.max(1024),
            client_handshake_timeout: Duration::from_secs(c.proxy.client_handshake_timeout.max(1)),
            client_read_timeout: (c.proxy.client_read_timeout > 0)
                .then(|| Duration::from_secs(c.proxy.client_read_timeout)),
            backend_connect_timeout: Duration::from_secs(c.proxy.backend_connect_timeout.max(1)),
            require_backend_tls: c.security.require_backend_tls,
            service_account: c.proxy.service_account.clone(),
            fail_backend_list: c.proxy.fail_backend_list.clone(),
            failover_timeout: Duration::from_secs(c.proxy.failover_timeout),
            policy: Policy {
                mode: Mode::parse(&c.balance.policy),
                routing: Routing::parse(&c.balance.routing_policy),
                label_name: c.balance.label_name.clone(),
                own_labels: c.labels.clone(),
                conn_count_ratio: c.balance.effective_count_ratio(),
                max_migrations_per_second: c.balance.max_migrations_per_second,
                rates: crate::balance::policy::rates_from(&c.balance),
                failover_timeout: Duration::from_secs(c.proxy.failover_timeout),
                hold: MOVE_HOLD,
                // Validated with the config; a rule that cannot be parsed here is left out.
                routes: crate::balance::routes::rules_from(&c.balance.routes),
                label_routing: crate::balance::policy::LabelRouting::parse(&c.balance.routing_rule),
            },
            proxy_protocol_v2: c.proxy.proxy_protocol == "v2",
            backend_proxy_header: c.proxy.sends_proxy_header(),
            // Validated with the config; an invalid list here trusts only loopback.
            proxy_protocol_networks: crate::config::networks::TrustedNetworks::parse(
                &c.proxy.proxy_protocol_networks,
            )
            .unwrap_or_default(),
            max_handshakes_per_source: c.proxy.max_handshakes_per_source,
            namespaces: Arc::new(crate::balance::routes_namespace::Namespaces::from_config(
                &c.namespace,
            )),
        }
    }
}

pub struct ProxyContext {
    settings: RwLock<Arc<SessionSettings>>,
    /// This App's metrics registry, shared with its backend set.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub tls: TlsContext,
    /// The backend list, for reports and for the balancer that feeds it.
    pub backends: Arc<BackendSet>,
    /// How sessions get a backend: the data plane goes through this, never the set itself.
    pub selector: Arc<dyn BackendSelector>,
    pub registry: Arc<Registry>,
    pub query_errors: QueryErrorLog,
    /// This proxy's recent events (`/api/events`): owned here, so two proxies in one process
    /// keep their own.
    pub events: Arc<EventLog>,
    /// Connections per client IP still in their handshake (`max-handshakes-per-source`).
    pub handshakes: Arc<super::per_source::Handshakes>,
    /// Bounds the moves running at once and shares the service account's recent lookups.
    pub move_gate: super::migrate::gate::MoveGate,
    /// Traffic capture and replay jobs; sessions check its capture flag on each command.
    pub traffic: Arc<super::traffic::Traffic>,
    next_conn_id: AtomicU64,
    active: AtomicU64,
    /// New connections get "shutting down" instead of a session.
    pub reject_new: CancellationToken,
    /// Sessions close at their next transaction boundary.
    pub closing: CancellationToken,
    /// Sessions close now, wherever they are.
    pub force_close: CancellationToken,
    /// What sessions read of `closing` and `force_close`: a token's state sits behind one lock
    /// all sessions would share, and sessions look between every two commands.
    closing_set: AtomicBool,
    force_close_set: AtomicBool,
}

impl ProxyContext {
    pub fn new(
        settings: SessionSettings,
        tls: TlsContext,
        backends: Arc<BackendSet>,
        query_errors: QueryErrorLog,
    ) -> Self {
        // Routing rules confine sessions from the first connection, not from the first
        // balancing round.
        backends.set_route_policy(settings.policy.clone());
        Self {
            metrics: backends.metrics().clone(),
            settings: RwLock::new(Arc::new(settings)),
            tls,
            selector: backends.clone(),
            backends,
            registry: Arc::new(Registry::default()),
            query_errors,
            events: Arc::new(EventLog::new(crate::events::CAPACITY)),
            handshakes: Arc::default(),
            move_gate: Default::default(),
            traffic: Arc::default(),
            next_conn_id: AtomicU64::new(1),
            active: AtomicU64::new(0),
            reject_new: CancellationToken::new(),
            closing: CancellationToken::new(),
            force_close: CancellationToken::new(),
            closing_set: AtomicBool::new(false),
            force_close_set: AtomicBool::new(false),
        }
    }

    /// Sessions close at their next transaction boundary from now on.
    pub fn begin_closing(&self) {
        self.closing_set.store(true, Ordering::Release);
        self.closing.cancel();
        self.registry.signal_all();
    }

    /// Every session closes now, in a transaction or not.
    pub fn close_all_now(&self) {
        self.force_close_set.store(true, Ordering::Release);
        self.force_close.cancel();
        self.registry.signal_all();
    }

    pub fn is_closing(&self) -> bool {
        self.closing_set.load(Ordering::Acquire)
    }

    pub fn is_force_closing(&self) -> bool {
        self.force_close_set.load(Ordering::Acquire)
    }

    pub fn settings(&self) -> Arc<SessionSettings> {
        self.settings.read().expect("settings lock").clone()
    }

    pub fn set_settings(&self, s: SessionSettings) {
        self.backends.set_route_policy(s.policy.clone());
        *self.settings.write().expect("settings lock") = Arc::new(s);
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn active_sessions(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a connection until the guard drops; `None` when max-connections is reached.
    pub fn admit(self: &Arc<Self>, max: u64) -> Option<ActiveGuard> {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if max > 0 && prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ActiveGuard(self.clone(), None))
    }

    /// The server version and capabilities to greet clients with: what the backends announce,
    /// so clients pick features every backend has.
    pub fn greeting_hint(&self) -> (String, u32) {
        let list = self.backends.snapshot();
        let mut version = String::new();
        let mut caps = u32::MAX;
        let mut seen = false;
        for b in list.iter() {
            let info = b.info();
            if info.server_version.is_empty() {
                continue;
            }
            if version.is_empty() || b.is_healthy() {
                version = info.server_version;
            }
            caps &= info.capabilities;
            seen = true;
        }
        if !seen {
            return (
                format!("8.0.11-tiproxy-{}", crate::version::VERSION),
                cap::PROXY_DEFAULT,
            );
        }
        (version, caps)
    }
}

/// A connection counted against max-connections; until it logs in, also against its IP's
/// handshakes.
pub struct ActiveGuard(
    Arc<ProxyContext>,
    Option<super::per_source::HandshakeTicket>,
);

impl ActiveGuard {
    /// Counts the connection against its source's handshakes; false when that is full.
    pub fn enter_handshake(&mut self, ip: std::net::IpAddr, limit: u64) -> bool {
        match self.0.handshakes.enter(ip, limit) {
            Some(t) => {
                self.1 = Some(t);
                true
            }
            None => false,
        }
    }

    /// The client logged in: it no longer counts as a handshake in progress.
    pub fn logged_in(&mut self) {
        self.1 = None;
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
