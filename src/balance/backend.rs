//! One backend as routing sees it: address, health, live session count, and what its last
//! greeting said (server version and capabilities, which the proxy mirrors to clients).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
pub struct BackendInfo {
    pub last_error: String,
    pub server_version: String,
    pub capabilities: u32,
}

#[derive(Debug)]
pub struct Backend {
    pub addr: String,
    healthy: AtomicBool,
    sessions: AtomicU64,
    info: Mutex<BackendInfo>,
}

impl Backend {
    pub fn new(addr: String) -> Self {
        Self {
            addr,
            // Optimistic until a probe says otherwise, so the proxy serves from its first second.
            healthy: AtomicBool::new(true),
            sessions: AtomicU64::new(0),
            info: Mutex::new(BackendInfo::default()),
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
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// Returns true when this changed the state.
    pub fn mark_healthy(&self) -> bool {
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
        Self { backend }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.backend.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}
