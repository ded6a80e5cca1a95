//! The HTTP status port: health for TiUP, Prometheus metrics, the admin config API, our
//! JSON views of backends, connections and events, and the web dashboard. Plain HTTP or
//! HTTPS (`[security.server-http-tls]`, client certificates required when it has a CA).
//! Who may reach what is `access`'s; how long a connection may dawdle and how many may be
//! open is bounded here, so the port stays answerable under a slow-request flood.

mod access;
mod auth;
mod dashboard;
pub mod history;
pub mod migrate;
pub mod namespace;
mod pprof;
mod routes;
mod slots;
pub mod stats;
mod tiproxy_paths;
mod traffic;

use crate::proxy::ProxyContext;
use crate::reload::Running;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub type Body = Full<Bytes>;

/// A request's headers must arrive within this, and an idle keep-alive connection is closed
/// after it: hyper arms the timer whenever it waits for a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A PUT body must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake must finish within this.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers read.
pub struct ApiState {
    pub ctx: Arc<ProxyContext>,
    pub running: Arc<Running>,
    /// Set first thing on shutdown: health turns 502 so load balancers and TiUP stop routing.
    pub draining: CancellationToken,
    pub started_at: SystemTime,
    pub started: Instant,
    pub stats: Arc<stats::Stats>,
    /// `[api] user/password` when set; without them the admin paths answer loopback callers.
    pub credentials: Option<(String, crate::config::Secret)>,
    /// Failed authentications per caller, to refuse guessing at network speed.
    pub auth_failures: auth::Failures,
    /// Host names of this machine, accepted on state-changing requests.
    pub local_names: Vec<String>,
    /// `PUT /api/debug/health`: an operator's verdict, until `DELETE` clears it.
    pub manual_health: tiproxy_paths::ManualHealth,
    /// `[[namespace]]` changes through the API, and the config file they are written into.
    pub namespaces: namespace::NamespaceStore,
}

impl ApiState {
    pub fn new(ctx: Arc<ProxyContext>, running: Arc<Running>, draining: CancellationToken) -> Self {
        let config = running.get();
        let api = &config.api;
        let credentials = (!api.user.is_empty() || !api.password.is_empty())
            .then(|| (api.user.clone(), api.password.clone()));
        ApiState {
            ctx,
            draining,
            started_at: SystemTime::now(),
            started: Instant::now(),
            stats: Default::default(),
            credentials,
            auth_failures: Default::default(),
            local_names: access::local_names(&config.proxy.advertise_addr),
            manual_health: Default::default(),
            namespaces: Default::default(),
            running,
        }
    }
}

/// Serves until `shutdown` fires; each connection is a task of its own.
pub fn start(
    listener: TcpListener,
    state: Arc<ApiState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    stats::start(state.stats.clone(), state.ctx.clone(), shutdown.clone());
    crate::metrics::monitor::start(&state.ctx.metrics);
    let draining = state.draining.clone();
    let metrics = state.ctx.metrics.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        crate::metrics::monitor::closing(&metrics);
    });
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            let scheme = if acceptor.is_some() { "https" } else { "http" };
            info!(addr = %addr, %scheme, "status port listening");
        }
        let slots = slots::Slots::new(slots::MAX_CONNECTIONS);
        let mut refused = 0u64;
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "status port accept failed");
                        crate::timer::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(ticket) = slots.admit().await else {
                refused += 1;
                if refused.is_power_of_two() {
                    warn!(client = %peer, refused, limit = slots::MAX_CONNECTIONS, "status port connection refused: every connection is serving a request, or none closed in time to make room");
                }
                continue;
            };
            tokio::spawn(serve(
                tcp,
                peer,
                state.clone(),
                acceptor.clone(),
                ticket,
                shutdown.clone(),
            ));
        }
    })
}

/// One status-port connection, until it ends, is evicted to make room, or the port closes.
async fn serve(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<ApiState>,
    acceptor: Option<TlsAcceptor>,
    ticket: slots::Ticket,
    shutdown: CancellationToken,
) {
    let in_flight = ticket.in_flight.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let busy = slots::Busy::new(&in_flight);
        async move {
            let r = routes::handle(&state, req, peer).await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let served = async {
        match acceptor {
            Some(a) => {
                let tls = match crate::timer::timeout(TLS_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
                    Err(_) => return Err("TLS handshake timed out".to_string()),
                };
                http.serve_connection(TokioIo::new(tls), svc)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => http
                .serve_connection(TokioIo::new(tcp), svc)
                .await
                .map_err(|e| e.to_string()),
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = ticket.evicted.cancelled() => {
            debug!(client = %peer, "status port connection closed to make room for a new one");
        }
        r = served => if let Err(e) = r {
            debug!(client = %peer, error = %e, "status port connection ended");
        },
    }
}
