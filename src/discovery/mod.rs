//! Where backends come from besides the static list: the TiDB topology in PD's etcd, plus this
//! proxy's own registration there, and the PD reachability state both share.

mod backoff;
mod pd_loop;
mod pd_status;
mod register;
mod topology;

pub use backoff::{human_duration, Backoff};
pub use pd_loop::Options;
pub use pd_status::{PdSnapshot, PdState, PdStatus};
pub use register::{advertise_ip, ProxyInfo, Registration, PROXY_PREFIX};
pub use topology::{parse_tidb_key, KeyKind, TidbInfo, TidbTopology, TIDB_PREFIX};

use crate::balance::BackendSet;
use crate::config::Config;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts discovery and registration against `Config::pd_addr_list()`, or nothing when it is
/// empty (static backends without explicit pd-addrs never touch PD). The task ends after
/// `shutdown` fires and our registration is removed (bounded by `Options::deregister_timeout`).
pub fn start(
    cfg: &Config,
    backends: Arc<BackendSet>,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    start_with(cfg, backends, Options::default(), shutdown)
}

pub fn start_with(
    cfg: &Config,
    backends: Arc<BackendSet>,
    opts: Options,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let endpoints = cfg.pd_addr_list();
    if endpoints.is_empty() {
        return None;
    }
    if cfg.security.cluster_tls.enabled_for_client() {
        tracing::warn!("[security.cluster-tls] is set but TLS to PD is not supported yet; PD is contacted in plain text");
    }
    let status = Arc::new(PdStatus::new(endpoints.clone()));
    backends.attach_pd_status(status.clone());
    let pd = pd_loop::Pd {
        registration: Some(Registration::from_config(cfg, &endpoints)),
        endpoints,
        backends,
        status,
        opts,
    };
    Some(pd_loop::start(pd, shutdown))
}
