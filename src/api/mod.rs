//! The HTTP status port: health for TiUP, Prometheus metrics, the admin config API, our
//! JSON views of backends, connections and events, and the web dashboard. Plain HTTP or
//! HTTPS (`[security.server-http-tls]`), with optional basic auth (`[api] user/password`).

mod auth;
mod dashboard;
pub mod history;
pub mod migrate;
mod routes;
pub mod stats;

use crate::proxy::ProxyContext;
use crate::reload::Running;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub type Body = Full<Bytes>;

/// What the handlers read.
pub struct ApiState {
    pub ctx: Arc<ProxyContext>,
    pub running: Arc<Running>,
    /// Set first thing on shutdown: health turns 502 so load balancers and TiUP stop routing.
    pub draining: CancellationToken,
    pub started_at: SystemTime,
    pub started: Instant,
    pub stats: Arc<stats::Stats>,
    /// `[api] user/password` when both are set; health and metrics stay open.
    pub credentials: Option<(String, String)>,
}

/// Serves until `shutdown` fires; each connection is a task of its own.
pub fn start(
    listener: TcpListener,
    state: Arc<ApiState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    stats::start(state.stats.clone(), state.ctx.clone(), shutdown.clone());
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            let scheme = if acceptor.is_some() { "https" } else { "http" };
            info!(addr = %addr, %scheme, "status port listening");
        }
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "status port accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let state = state.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, req).await) }
                });
                let served = async {
                    match acceptor {
                        Some(a) => {
                            let tls = match tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                a.accept(tcp),
                            )
                            .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => return Err(e.to_string()),
                                Err(_) => return Err("TLS handshake timed out".to_string()),
                            };
                            http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await
                                .map_err(|e| e.to_string())
                        }
                        None => http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await
                            .map_err(|e| e.to_string()),
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    r = served => if let Err(e) = r {
                        debug!(client = %peer, error = %e, "status port connection ended");
                    },
                }
            });
        }
    })
}
