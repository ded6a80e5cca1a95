//! Every Prometheus metric the proxy exports, defined in one place with the TiProxy names
//! (namespace `tiproxy`) so the existing Grafana dashboard keeps working.
//!
//! The hot path never formats a label or takes a lock: proxy-wide series are plain fields
//! here, and per-backend series are resolved once per backend in [`backend::BackendMetrics`].
//!
//! The registry is owned by the App that serves it (and shared through its context), not by
//! the process: two proxies in one process (as in tests) count and show their own numbers.

pub mod backend;
pub mod batch;
pub mod monitor;
pub mod panics;
pub mod runtime;

pub use backend::BackendMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const NS: &str = "tiproxy";

/// Query latency buckets: 0.5 ms .. ~67 s, doubling.
pub(crate) fn query_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
}

/// Why the server refused a connection before a session started.
pub const REJECT_TOO_MANY: &str = "too_many_connections";
pub const REJECT_SHUTTING_DOWN: &str = "shutting_down";

/// How a session ended (`server_disconnection_total{type}`), in TiProxy's words so its
/// dashboards and alerts read ours. `proxy::error_source` picks one from where the failure
/// came from. TiProxy's `SQL error` (a session ended by a MySQL error) has no case here: a
/// backend's error is passed to the client and the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    Success,
    ClientNetwork,
    ClientHandshake,
    AuthFail,
    ProxyShutdown,
    Malformed,
    NoBackend,
    ProxyError,
    BackendNetwork,
    BackendHandshake,
}

impl Disconnect {
    pub const ALL: [Disconnect; 10] = [
        Disconnect::Success,
        Disconnect::ClientNetwork,
        Disconnect::ClientHandshake,
        Disconnect::AuthFail,
        Disconnect::ProxyShutdown,
        Disconnect::Malformed,
        Disconnect::NoBackend,
        Disconnect::ProxyError,
        Disconnect::BackendNetwork,
        Disconnect::BackendHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Disconnect::Success => "success",
            Disconnect::ClientNetwork => "client network break",
            Disconnect::ClientHandshake => "client handshake fail",
            Disconnect::AuthFail => "auth fail",
            Disconnect::ProxyShutdown => "proxy shutdown",
            Disconnect::Malformed => "malformed packet",
            Disconnect::NoBackend => "get backend fail",
            Disconnect::ProxyError => "proxy error",
            Disconnect::BackendNetwork => "backend network break",
            Disconnect::BackendHandshake => "backend handshake fail",
        }
    }
}

pub struct Metrics {
    /// Tells registries apart in a thread's batch ([`batch`]).
    pub(crate) id: u64,
    pub registry: Registry,
    pub connections: IntGauge,
    pub create_connection: IntCounter,
    pub maxprocs: IntGauge,
    pub reject: IntCounterVec,
    pub reject_too_many: IntCounter,
    pub reject_shutting_down: IntCounter,
    pub disconnection: IntCounterVec,
    /// One handle per [`Disconnect`], in its declaration order.
    disconnect_handles: [IntCounter; Disconnect::ALL.len()],
    pub server_err: IntCounterVec,
    pub query_total: IntCounterVec,
    pub query_duration: HistogramVec,
    pub query_errors: IntCounterVec,
    pub handshake_duration: HistogramVec,
    pub conn_lifetime: Histogram,
    pub b_status: IntGaugeVec,
    pub b_conn: IntGaugeVec,
    pub get_backend: IntCounterVec,
    pub get_backend_ok: IntCounter,
    pub get_backend_fail: IntCounter,
    pub dial_fail: IntCounterVec,
    pub health_check_seconds: prometheus::Gauge,
    pub migrate_total: IntCounterVec,
    pub migrate_method: IntCounterVec,
    pub migrate_duration: HistogramVec,
    pub inbound_bytes: IntCounterVec,
    pub outbound_bytes: IntCounterVec,
    /// Each backend's score per balancing factor, as the balancer last saw it.
    pub b_score: IntGaugeVec,
    pub cross_location_bytes: IntCounter,
    pub inbound_packets: IntCounterVec,
    pub outbound_packets: IntCounterVec,
    /// Time to find a backend that takes a new session (routing and dialling), as TiProxy.
    pub get_backend_duration: Histogram,
    /// Each backend's last SQL-port probe time.
    pub ping_duration: prometheus::GaugeVec,
    /// Sessions asked to move that have not moved yet, by from, to and reason.
    pub pending_migrate: IntGaugeVec,
    /// 1 for each job this proxy owns; no series while it owns none (TiProxy's elections).
    pub owner: IntGaugeVec,
    pub time_jump_back: IntCounter,
    pub keep_alive: IntCounter,
    /// `go_goroutines`: this process's OS threads (no Go runtime here; see `runtime`).
    pub go_goroutines: IntGauge,
    /// `go_memory_classes_heap_objects_bytes`: heap bytes allocated and not freed.
    pub go_heap_objects_bytes: IntGauge,
    /// Process events: start, close.
    pub server_event: IntCounterVec,
    /// How long after its connection was made each query started.
    pub query_since_creation: Histogram,
    /// Per-backend handles by address; see [`Metrics::backend`].
    backends: Mutex<HashMap<String, Arc<BackendMetrics>>>,
    /// `pending_migrate` series set before, kept at 0 rather than dropped.
    pending_seen: Mutex<Vec<monitor::PendingKey>>,
    /// Process panics already added to `server_err{type="panic"}`.
    panics_counted: AtomicU64,
}

fn opts(subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS).subsystem(subsystem)
}

fn hopts(subsystem: &str, name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NS)
        .subsystem(subsystem)
        .buckets(buckets)
}

impl Metrics {
    pub fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let r = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                r.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        let lifetime_buckets =
            prometheus::exponential_buckets(1.0, 2.0, 20).expect("valid buckets");
        let handshake_buckets =
            prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
        let reject = reg!(IntCounterVec::new(
            opts(
                "server",
                "reject_connection_total",
                "Connections refused before a session started, by reason."
            ),
            &["type"]
        )
        .unwrap());
        let disconnection = reg!(IntCounterVec::new(
            opts(
                "server",
                "disconnection_total",
                "Sessions ended, by how they ended."
            ),
            &["type"]
        )
        .unwrap());
        let get_backend = reg!(IntCounterVec::new(
            opts(
                "backend",
                "get_backend",
                "Backend selections for new sessions, by result."
            ),
            &["res"]
        )
        .unwrap());
        let m = Metrics {
            connections: reg!(IntGauge::with_opts(opts(
                "server",
                "connections",
                "Client connections open now."
            ))
            .unwrap()),
            create_connection: reg!(IntCounter::with_opts(opts(
                "server",
                "create_connection_total",
                "Client connections accepted."
            ))
            .unwrap()),
            maxprocs: reg!(IntGauge::with_opts(opts(
                "server",
                "maxprocs",
                "CPUs the proxy may use."
            ))
            .unwrap()),
            reject_too_many: reject.with_label_values(&[REJECT_TOO_MANY]),
            reject_shutting_down: reject.with_label_values(&[REJECT_SHUTTING_DOWN]),
            reject,
            disconnect_handles: Disconnect::ALL
                .map(|d| disconnection.with_label_values(&[d.label()])),
            disconnection,
            server_err: reg!(IntCounterVec::new(
                opts("server", "err", "Internal errors, by kind."),
                &["type"]
            )
            .unwrap()),
            query_total: reg!(IntCounterVec::new(
                opts(
                    "session",
                    "query_total",
                    "Commands relayed, by backend and command type."
                ),
                &["backend", "cmd_type"]
            )
            .unwrap()),
            query_duration: reg!(HistogramVec::new(
                hopts(
                    "session",
                    "query_duration_seconds",
                    "Command latency through the proxy, by backend and command type.",
                    query_buckets()
                ),
                &["backend", "cmd_type"]
            )
            .unwrap()),
            query_errors: reg!(IntCounterVec::new(
                opts(
                    "session",
                    "query_error_total",
                    "Commands the backend answered with an error, by backend."
                ),
                &["backend"]
            )
            .unwrap()),
            handshake_duration: reg!(HistogramVec::new(
                hopts(
                    "session",
                    "handshake_duration_seconds",
                    "Time from accept to an authenticated session, by backend.",
                    handshake_buckets
                ),
                &["backend"]
            )
            .unwrap()),
            conn_lifetime: reg!(Histogram::with_opts(hopts(
                "session",
                "conn_lifetime_seconds",
                "How long client sessions lasted.",
                lifetime_buckets
            ))
            .unwrap()),
            b_status: reg!(IntGaugeVec::new(
                opts(
                    "backend",
                    "b_status",
                    "Backend health: 1 healthy, 0 unhealthy."
                ),
                &["backend"]
            )
            .unwrap()),
            b_conn: reg!(IntGaugeVec::new(
                opts("balance", "b_conn", "Sessions on each backend."),
                &["backend"]
            )
            .unwrap()),
            get_backend_ok: get_backend.with_label_values(&["succeed"]),
            get_backend_fail: get_backend.with_label_values(&["fail"]),
            get_backend,
            dial_fail: reg!(IntCounterVec::new(
                opts(
                    "backend",
                    "dial_backend_fail",
                    "Failed connection attempts to a backend."
                ),
                &["backend"]
            )
            .unwrap()),
            health_check_seconds: reg!(prometheus::Gauge::with_opts(opts(
                "backend",
                "health_check_seconds",
                "Duration of the last health-check round over all backends."
            ))
            .unwrap()),
            migrate_total: reg!(IntCounterVec::new(
                opts(
                    "balance",
                    "migrate_total",
                    "Session migrations, by source, target, reason and result."
                ),
                &["from", "to", "reason", "migrate_res"]
            )
            .unwrap()),
            migrate_method: reg!(IntCounterVec::new(
                opts(
                    "balance",
                    "migrate_method_total",
                    "Session migrations, by how the session was rebuilt and result."
                ),
                &["method", "migrate_res"]
            )
            .unwrap()),
            migrate_duration: reg!(HistogramVec::new(
                hopts(
                    "balance",
                    "migrate_duration_seconds",
                    "Session migration time.",
                    query_buckets()
                ),
                &["from", "to", "migrate_res"]
            )
            .unwrap()),
            inbound_bytes: reg!(IntCounterVec::new(
                opts("traffic", "inbound_bytes", "Bytes received from backends."),
                &["backend"]
            )
            .unwrap()),
            outbound_bytes: reg!(IntCounterVec::new(
                opts("traffic", "outbound_bytes", "Bytes sent to backends."),
                &["backend"]
            )
            .unwrap()),
            b_score: reg!(IntGaugeVec::new(
                opts(
                    "balance",
                    "b_score",
                    "Each backend's score on each balancing factor that counts (lower is better)."
                ),
                &["backend", "factor"]
            )
            .unwrap()),
            cross_location_bytes: reg!(IntCounter::with_opts(opts(
                "traffic",
                "cross_location_bytes",
                "Bytes to and from backends in another zone than the proxy's."
            ))
            .unwrap()),
            inbound_packets: reg!(IntCounterVec::new(
                opts(
                    "traffic",
                    "inbound_packets",
                    "Packets received from backends (one response per command)."
                ),
                &["backend"]
            )
            .unwrap()),
            outbound_packets: reg!(IntCounterVec::new(
                opts(
                    "traffic",
                    "outbound_packets",
                    "Packets sent to backends (one per command)."
                ),
                &["backend"]
            )
            .unwrap()),
            get_backend_duration: reg!(Histogram::with_opts(hopts(
                "backend",
                "get_backend_duration_seconds",
                "Time (s) to find and connect a backend for a new session.",
                prometheus::exponential_buckets(0.000001, 2.0, 26).expect("valid buckets"),
            ))
            .unwrap()),
            ping_duration: reg!(prometheus::GaugeVec::new(
                opts(
                    "backend",
                    "ping_duration_seconds",
                    "Time (s) of the last probe of each backend's SQL port."
                ),
                &["backend"]
            )
            .unwrap()),
            pending_migrate: reg!(IntGaugeVec::new(
                opts(
                    "balance",
                    "pending_migrate",
                    "Sessions asked to move that have not moved yet."
                ),
                &["from", "to", "reason"]
            )
            .unwrap()),
            owner: reg!(IntGaugeVec::new(
                opts(
                    "server",
                    "owner",
                    "1 for each job type this proxy owns among its peers."
                ),
                &["type"]
            )
            .unwrap()),
            time_jump_back: reg!(IntCounter::with_opts(opts(
                "monitor",
                "time_jump_back_total",
                "Times the system clock was seen to go backwards."
            ))
            .unwrap()),
            keep_alive: reg!(IntCounter::with_opts(opts(
                "monitor",
                "keep_alive_total",
                "Ticks of the liveness monitor (one every 5 s while the process is responsive)."
            ))
            .unwrap()),
            server_event: reg!(IntCounterVec::new(
                opts("server", "event", "Process events (start, close)."),
                &["type"]
            )
            .unwrap()),
            query_since_creation: reg!(Histogram::with_opts(hopts(
                "session",
                "query_time_since_conn_creation_seconds",
                "Time (s) from a connection's creation to the start of each of its queries.",
                prometheus::exponential_buckets(1.0, 2.0, 21).expect("valid buckets"),
            ))
            .unwrap()),
            go_goroutines: reg!(IntGauge::new(
                "go_goroutines",
                "OS threads of this process (TiProxy's Go goroutine panel; no Go runtime here)."
            )
            .unwrap()),
            go_heap_objects_bytes: reg!(IntGauge::new(
                "go_memory_classes_heap_objects_bytes",
                "Heap bytes allocated and not freed (TiProxy's Go heap panel; the C allocator's figure here)."
            )
            .unwrap()),
            registry: r,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            backends: Mutex::default(),
            pending_seen: Mutex::default(),
            panics_counted: AtomicU64::new(0),
        };
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            m.registry
                .register(Box::new(pc))
                .expect("process collector");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        m.maxprocs.set(cpus as i64);
        // Served at zero from the start: the Grafana panel then shows 0, not "no data".
        m.server_err.with_label_values(&[panics::PANIC]);
        m
    }

    /// The counter for one way a session can end.
    pub fn disconnected(&self, how: Disconnect) -> &IntCounter {
        &self.disconnect_handles[how as usize]
    }

    /// Every series in the Prometheus text format.
    pub fn render(&self) -> String {
        self.catch_up_panics();
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_compat_names_and_process_metrics() {
        let m = Metrics::new();
        m.connections.set(0);
        let b = m.backend("127.0.0.1:1");
        b.record(crate::protocol::constants::cmd::QUERY, 0.001, true, (0, 0));
        let text = m.render();
        for name in [
            "tiproxy_server_connections",
            "tiproxy_session_query_total",
            "tiproxy_session_query_duration_seconds_bucket",
            "tiproxy_server_maxprocs",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_start_time_seconds"));
    }
}
