//! One backend as routing sees it: address, where it came from, health, live session count,
//! and what its last greeting said (server version and capabilities, which the proxy mirrors
//! to clients).

use crate::metrics::BackendMetrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Where a backend address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendSource {
    /// `[proxy] backend-addrs`.
    Static,
    /// A TiDB found under `/topology/tidb/` in PD's etcd.
    Pd,
}

impl BackendSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendSource::Static => "static",
            BackendSource::Pd => "pd",
        }
    }
}

/// What a source says about one backend; the set turns specs into live backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: String,
    pub source: BackendSource,
    /// `ip:status_port` of a TiDB, probed with `GET /status`.
    pub status_addr: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl BackendSpec {
    pub fn new_static(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            source: BackendSource::Static,
            status_addr: None,
            labels: BTreeMap::new(),
        }
    }
}

/// The descriptive part of a backend, which may change while its sessions live on.
#[derive(Debug, Clone)]
struct Meta {
    source: BackendSource,
    status_addr: Option<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone)]
pub struct BackendInfo {
    pub last_error: String,
    pub server_version: String,
    pub capabilities: u32,
}

#[derive(Debug)]
pub struct Backend {
    pub addr: String,
    meta: RwLock<Meta>,
    healthy: AtomicBool,
    sessions: AtomicU64,
    info: Mutex<BackendInfo>,
    /// Resolved once here so sessions count queries without a label lookup.
    pub metrics: Arc<BackendMetrics>,
}

impl Backend {
    /// A static backend with series in a registry of its own (for tests of one backend).
    pub fn new(addr: String) -> Self {
        Self::from_spec(
            BackendSpec::new_static(addr),
            &crate::metrics::Metrics::new(),
        )
    }

    pub fn from_spec(spec: BackendSpec, metrics: &crate::metrics::Metrics) -> Self {
        let metrics = metrics.backend(&spec.addr);
        metrics.status.set(1);
        Self {
            metrics,
            addr: spec.addr,
            meta: RwLock::new(Meta {
                source: spec.source,
                status_addr: spec.status_addr,
                labels: spec.labels,
            }),
            // Optimistic until a probe says otherwise, so the proxy serves from its first second.
            healthy: AtomicBool::new(true),
            sessions: AtomicU64::new(0),
            info: Mutex::new(BackendInfo::default()),
        }
    }

    pub fn source(&self) -> BackendSource {
        self.meta.read().expect("backend meta").source
    }

    pub fn status_addr(&self) -> Option<String> {
        self.meta.read().expect("backend meta").status_addr.clone()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.meta.read().expect("backend meta").labels.clone()
    }

    /// A TiDB that restarts on the same SQL address may change its status port or labels.
    pub(crate) fn update_meta(&self, spec: &BackendSpec) {
        let mut m = self.meta.write().expect("backend meta");
        m.source = spec.source;
        if m.status_addr != spec.status_addr {
            m.status_addr = spec.status_addr.clone();
        }
        if m.labels != spec.labels {
            m.labels = spec.labels.clone();
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Returns true when this changed the state.
    pub fn mark_unhealthy(&self, reason: &str) -> bool {
        self.info.lock().expect("backend info").last_error = reason.to_owned();
        self.metrics.status.set(0);
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// Returns true when this changed the state.
    pub fn mark_healthy(&self) -> bool {
        self.metrics.status.set(1);
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    pub fn record_greeting(&self, server_version: &str, capabilities: u32) {
        let mut info = self.info.lock().expect("backend info");
        if info.server_version != server_version {
            info.server_version = server_version.to_owned();
        }
        info.capabilities = capabilities;
    }

    pub fn info(&self) -> BackendInfo {
        self.info.lock().expect("backend info").clone()
    }

    pub fn last_error_or(&self, default: &str) -> String {
        let info = self.info.lock().expect("backend info");
        if info.last_error.is_empty() {
            default.to_owned()
        } else {
            info.last_error.clone()
        }
    }
}

/// Counts a session against a backend for as long as it lives.
#[derive(Debug)]
pub struct BackendLease {
    backend: Arc<Backend>,
}

impl BackendLease {
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.sessions.fetch_add(1, Ordering::Relaxed);
        backend.metrics.conns.inc();
        Self { backend }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.backend.sessions.fetch_sub(1, Ordering::Relaxed);
        self.backend.metrics.conns.dec();
    }
}
