//! Applying a new configuration to a running proxy without a restart: session settings,
//! the backend list and the log level change in place; keys that need a restart are
//! reported, and the new config becomes the one the API shows. Shared by `PUT
//! /api/admin/config` and the config-file watcher.

use crate::config::{is_hot_reloadable, Config, ConfigError};
use crate::logging::{LogError, LogHandle};
use crate::proxy::{ProxyContext, SessionSettings};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tracing::{info, warn};

/// The running configuration and what a change must reach.
pub struct Running {
    config: RwLock<Arc<Config>>,
    ctx: Arc<ProxyContext>,
    log: OnceLock<LogHandle>,
    /// One reload at a time, so two concurrent PUTs cannot interleave their steps.
    serial: Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReloadReport {
    /// Every key whose value changed, as `section.key`.
    pub changed: Vec<String>,
    /// Changed keys now in effect.
    pub applied: Vec<String>,
    /// Changed keys stored but only in effect after a restart.
    pub restart_required: Vec<String>,
    pub config_checksum: u64,
}

impl Running {
    pub fn new(config: Config, ctx: Arc<ProxyContext>) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            ctx,
            log: OnceLock::new(),
            serial: Mutex::new(()),
        }
    }

    /// Lets `log.level` changes reach the logger; without it they need a restart.
    pub fn set_log_handle(&self, h: LogHandle) {
        let _ = self.log.set(h);
    }

    pub fn get(&self) -> Arc<Config> {
        self.config.read().expect("running config").clone()
    }
}

/// Why a new config was not applied; the running config is then untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{0}")]
    LogLevel(#[from] LogError),
    #[error("{0}")]
    Compare(#[from] toml::ser::Error),
    #[error("an earlier reload panicked; restart the proxy")]
    Poisoned,
}

/// Validates `next` and makes it the running config; the running config is untouched on error.
pub fn apply(running: &Running, next: Config) -> Result<ReloadReport, ReloadError> {
    let _one = running.serial.lock().map_err(|_| ReloadError::Poisoned)?;
    next.validate()?;
    let old = running.get();
    let changed = changed_keys(&old, &next)?;
    let mut report = ReloadReport {
        config_checksum: next.checksum(),
        ..Default::default()
    };
    if changed.is_empty() {
        return Ok(report);
    }
    // The only step that can fail goes first, so a failure leaves everything as it was.
    let log_changed = old.log.level != next.log.level;
    if log_changed {
        if let Some(h) = running.log.get() {
            h.set_level(&next.log.level)?;
        }
    }
    running
        .ctx
        .set_settings(SessionSettings::from_config(&next));
    if old.static_backend_addrs() != next.static_backend_addrs() {
        running.ctx.backends.set_addrs(&next.static_backend_addrs());
    }
    for key in &changed {
        let live = is_hot_reloadable(key) && (key != "log.level" || running.log.get().is_some());
        if live {
            report.applied.push(key.clone());
        } else {
            report.restart_required.push(key.clone());
        }
    }
    report.changed = changed;
    *running.config.write().expect("running config") = Arc::new(next);
    let mut msg = format!("config changed: {}", report.changed.join(", "));
    if !report.restart_required.is_empty() {
        msg.push_str(&format!(
            " (needs a restart: {})",
            report.restart_required.join(", ")
        ));
        warn!(keys = ?report.restart_required, "config keys changed that take effect only after a restart");
    }
    info!(applied = ?report.applied, checksum = report.config_checksum, "config reloaded");
    running.ctx.events.push("config", msg);
    Ok(report)
}

/// Leaf keys (`section.key`, arrays as leaves) whose values differ.
fn changed_keys(old: &Config, new: &Config) -> Result<Vec<String>, toml::ser::Error> {
    let a = flatten(old)?;
    let b = flatten(new)?;
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn flatten(c: &Config) -> Result<BTreeMap<String, toml::Value>, toml::ser::Error> {
    let table = toml::Table::try_from(c)?;
    let mut out = BTreeMap::new();
    walk("", &table, &mut out);
    Ok(out)
}

fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => walk(&key, inner, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BackendSet;
    use crate::protocol::stream::TlsContext;

    fn running(c: &Config) -> Running {
        let backends = Arc::new(BackendSet::new(&c.proxy.backend_addrs));
        let ctx = Arc::new(ProxyContext::new(
            SessionSettings::from_config(c),
            TlsContext::new(None, None),
            backends,
            crate::proxy::query_log::QueryErrorLog::new(false),
        ));
        Running::new(c.clone(), ctx)
    }

    #[test]
    fn hot_keys_apply_and_others_need_a_restart() {
        let r = running(&Config::default());
        let mut next = Config::default();
        next.proxy.max_connections = 7;
        next.proxy.backend_addrs = vec!["127.0.0.1:1".into()];
        next.proxy.addr = "127.0.0.1:7000".into();
        let rep = apply(&r, next).unwrap();
        assert_eq!(
            rep.changed,
            ["proxy.addr", "proxy.backend-addrs", "proxy.max-connections"]
        );
        assert_eq!(rep.restart_required, ["proxy.addr"]);
        assert_eq!(r.ctx.settings().max_connections, 7);
        assert_eq!(r.ctx.backends.snapshot()[0].addr, "127.0.0.1:1");
        assert_eq!(r.get().proxy.addr, "127.0.0.1:7000");
    }

    #[test]
    fn an_invalid_config_changes_nothing() {
        let r = running(&Config::default());
        let mut next = Config::default();
        next.log.level = "loud".into();
        next.proxy.max_connections = 3;
        assert!(apply(&r, next).is_err());
        assert_eq!(*r.get(), Config::default());
        assert_eq!(r.ctx.settings().max_connections, 0);
    }
}
