//! Status-port paths the Go TiProxy has and operators' scripts call: the manual health
//! override (`PUT`/`DELETE /api/debug/health`), `POST /api/debug/redirect`,
//! `GET /api/backend/metrics`. All of them are admin paths (only `GET /api/debug/health` is
//! open), so they pass `access`'s rules first.

use crate::proxy::registry::Redirect;
use crate::proxy::ProxyContext;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Mutex;

/// An operator's verdict that overrides the computed health until it is cleared.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HealthOverride {
    pub healthy: bool,
    #[serde(default)]
    pub reason: String,
}

/// Longest reason kept; it is echoed to every load balancer that polls.
const MAX_REASON: usize = 256;

/// A health override body that is not TiProxy's JSON shape.
#[derive(Debug, thiserror::Error)]
#[error("expected JSON {{\"healthy\": true|false, \"reason\": \"...\"}}: {0}")]
pub struct BadOverride(#[from] serde_json::Error);

#[derive(Default)]
pub struct ManualHealth(Mutex<Option<HealthOverride>>);

impl ManualHealth {
    pub fn get(&self) -> Option<HealthOverride> {
        self.0.lock().expect("health override").clone()
    }

    /// Parse TiProxy's JSON body `{"healthy": bool, "reason": "..."}` and store it.
    pub fn set_from_json(&self, body: &[u8]) -> Result<HealthOverride, BadOverride> {
        let mut o: HealthOverride = serde_json::from_slice(body)?;
        o.reason = o.reason.trim().chars().take(MAX_REASON).collect();
        if !o.healthy && o.reason.is_empty() {
            o.reason = "marked unhealthy by an operator".into();
        }
        *self.0.lock().expect("health override") = Some(o.clone());
        Ok(o)
    }

    pub fn clear(&self) -> bool {
        self.0.lock().expect("health override").take().is_some()
    }
}

/// Ask every session to be routed again by the balancer at its next transaction boundary,
/// as TiProxy's redirect does; sessions already where the balancer wants them stay.
pub fn redirect_all(ctx: &ProxyContext) -> usize {
    let mut n = 0;
    for e in ctx.registry.entries() {
        e.request_redirect(Redirect {
            target: None,
            reason: "api",
        });
        n += 1;
    }
    n
}

/// What the balancer last read from each backend (CPU and memory shares, error rate) and its
/// scores; TiProxy serves the backends' raw readings here, we serve the figures derived.
pub fn backend_metrics(ctx: &ProxyContext) -> Value {
    let route = ctx.backends.route_view();
    let mut out = serde_json::Map::new();
    for b in ctx.backends.snapshot().iter() {
        let load = route.loads.get(&b.addr);
        out.insert(
            b.addr.clone(),
            json!({
                "healthy": b.is_healthy(),
                "cpu_usage": load.and_then(|l| l.cpu),
                "memory_usage": load.and_then(|l| l.memory),
                "error_rate": load.and_then(|l| l.error_rate),
                "scores": route.scores.get(&b.addr).cloned().unwrap_or_default(),
            }),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_parses_trims_and_clears() {
        let m = ManualHealth::default();
        assert!(m.get().is_none());
        let o = m
            .set_from_json(br#"{"healthy": false, "reason": "  upgrade  "}"#)
            .unwrap();
        assert_eq!(o.reason, "upgrade");
        assert_eq!(m.get(), Some(o));
        let o = m.set_from_json(br#"{"healthy": false}"#).unwrap();
        assert!(!o.reason.is_empty(), "an unhealthy verdict always says why");
        assert!(m.set_from_json(b"healthy").is_err());
        assert!(m.clear());
        assert!(!m.clear());
        let long = format!(r#"{{"healthy": false, "reason": "{}"}}"#, "x".repeat(5000));
        assert_eq!(
            m.set_from_json(long.as_bytes()).unwrap().reason.len(),
            MAX_REASON
        );
    }
}
