//! The rebalancer: once a second it asks sessions to move off backends that are unhealthy,
//! gone from the list or in fail-backend-list (all of them, at their next transaction
//! boundary), and moves a bounded number per second from the busiest to the least busy
//! healthy backend. Sessions left on a failed backend after failover-timeout are closed.

use super::context::ProxyContext;
use super::registry::{Redirect, SessionEntry};
use crate::balance::Backend;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

const TICK: Duration = Duration::from_secs(1);
/// A session moved for balance is left alone this long, so sessions never ping-pong.
const SETTLE: Duration = Duration::from_secs(30);

pub fn start(ctx: Arc<ProxyContext>, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = Rebalancer::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            if ctx.closing.is_cancelled() {
                continue;
            }
            state.tick(&ctx, Instant::now());
        }
    })
}

#[derive(Default)]
struct Rebalancer {
    /// When each session was first seen on a failed backend.
    stranded_since: HashMap<u64, Instant>,
    /// When each session was last asked to move for balance.
    balanced_at: HashMap<u64, Instant>,
}

/// Why a session on `addr` must leave it, if it must.
pub fn drain_reason(
    addr: &str,
    list: &[Arc<Backend>],
    fail_list: &[String],
) -> Option<&'static str> {
    if fail_list.iter().any(|f| f == addr) {
        return Some("fail-backend-list");
    }
    match list.iter().find(|b| b.addr == addr) {
        None => Some("backend-removed"),
        Some(b) if !b.is_healthy() => Some("backend-unhealthy"),
        Some(_) => None,
    }
}

/// The busiest and least busy eligible backends when they are out of balance, and how many
/// sessions to move now.
pub fn imbalance(
    list: &[Arc<Backend>],
    fail_list: &[String],
    ratio: f64,
    per_second: u32,
) -> Option<(Arc<Backend>, Arc<Backend>, usize)> {
    let eligible: Vec<&Arc<Backend>> = list
        .iter()
        .filter(|b| b.is_healthy() && !fail_list.contains(&b.addr))
        .collect();
    let max = eligible.iter().max_by_key(|b| b.sessions())?;
    let min = eligible.iter().min_by_key(|b| b.sessions())?;
    let (hi, lo) = (max.sessions(), min.sessions());
    if hi < lo + 2 || (hi as f64) <= (lo as f64) * ratio.max(1.0) {
        return None;
    }
    let n = ((hi - lo) / 2).min(u64::from(per_second)) as usize;
    (n > 0).then(|| ((*max).clone(), (*min).clone(), n))
}

impl Rebalancer {
    fn tick(&mut self, ctx: &ProxyContext, now: Instant) {
        let settings = ctx.settings();
        let list = ctx.backends.snapshot();
        let entries = ctx.registry.entries();
        let has_target = |from: &str| {
            list.iter().any(|b| {
                b.is_healthy() && b.addr != from && !settings.fail_backend_list.contains(&b.addr)
            })
        };
        let mut live = std::collections::HashSet::new();
        for e in &entries {
            live.insert(e.id);
            let addr = e.backend();
            if addr.is_empty() {
                continue;
            }
            match drain_reason(&addr, &list, &settings.fail_backend_list) {
                Some(reason) => {
                    let since = *self.stranded_since.entry(e.id).or_insert(now);
                    if reason == "fail-backend-list"
                        && now.duration_since(since) >= settings.failover_timeout
                    {
                        warn!(conn = e.id, backend = %addr, "closing session still on a fail-backend-list backend after failover-timeout");
                        e.request_close();
                        continue;
                    }
                    if has_target(&addr) && !e.has_redirect() {
                        e.request_redirect(Redirect {
                            target: None,
                            reason,
                        });
                    }
                }
                None => {
                    self.stranded_since.remove(&e.id);
                }
            }
        }
        self.stranded_since.retain(|id, _| live.contains(id));
        self.balanced_at
            .retain(|id, at| live.contains(id) && now.duration_since(*at) < SETTLE);
        if let Some((from, to, n)) = imbalance(
            &list,
            &settings.fail_backend_list,
            settings.conn_count_ratio,
            settings.max_migrations_per_second,
        ) {
            let movable: Vec<&Arc<SessionEntry>> = entries
                .iter()
                .filter(|e| {
                    e.backend() == from.addr
                        && !e.in_transaction()
                        && !e.has_redirect()
                        && !self.balanced_at.contains_key(&e.id)
                })
                .take(n)
                .collect();
            for e in movable {
                self.balanced_at.insert(e.id, now);
                e.request_redirect(Redirect {
                    target: Some(to.addr.clone()),
                    reason: "conn-count",
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BackendLease;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| Arc::new(Backend::new(format!("b{i}:1"))))
            .collect()
    }

    #[test]
    fn drain_reasons() {
        let list = backends(2);
        list[1].mark_unhealthy("down");
        assert_eq!(drain_reason("b0:1", &list, &[]), None);
        assert_eq!(drain_reason("b1:1", &list, &[]), Some("backend-unhealthy"));
        assert_eq!(drain_reason("gone:1", &list, &[]), Some("backend-removed"));
        assert_eq!(
            drain_reason("b0:1", &list, &["b0:1".into()]),
            Some("fail-backend-list")
        );
    }

    #[test]
    fn imbalance_is_bounded_and_needs_a_real_gap() {
        let list = backends(2);
        let leases: Vec<_> = (0..10)
            .map(|_| BackendLease::new(list[0].clone()))
            .collect();
        let (from, to, n) = imbalance(&list, &[], 1.5, 3).unwrap();
        assert_eq!(
            (from.addr.as_str(), to.addr.as_str(), n),
            ("b0:1", "b1:1", 3)
        );
        let _more: Vec<_> = (0..9).map(|_| BackendLease::new(list[1].clone())).collect();
        assert!(
            imbalance(&list, &[], 1.5, 3).is_none(),
            "10 vs 9 is balanced"
        );
        drop(leases);
        let list = backends(2);
        let _one = BackendLease::new(list[0].clone());
        assert!(
            imbalance(&list, &[], 1.5, 3).is_none(),
            "1 vs 0 is not worth a move"
        );
    }
}
