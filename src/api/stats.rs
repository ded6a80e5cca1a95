//! Recent per-backend rates for the API and dashboard (QPS, error rate, p99 latency),
//! computed by sampling the cumulative metrics every couple of seconds, off the hot path.

use crate::metrics::backend::BackendTotals;
use crate::metrics::query_buckets;
use crate::proxy::ProxyContext;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rates {
    pub qps: f64,
    /// Share of commands answered with an error, 0..1.
    pub error_rate: f64,
    /// Upper bound of the bucket holding the 99th percentile; None without traffic.
    pub p99_ms: Option<f64>,
}

#[derive(Default)]
pub struct Stats {
    inner: Mutex<HashMap<String, (Instant, BackendTotals, Rates)>>,
    /// Each sample's rates over the last minutes, for the dashboard's graphs.
    pub history: super::history::History,
}

impl Stats {
    pub fn rates(&self, addr: &str) -> Rates {
        self.inner
            .lock()
            .expect("stats")
            .get(addr)
            .map(|e| e.2)
            .unwrap_or_default()
    }

    /// Takes a sample of one backend and updates its rates against the previous one.
    pub fn sample(&self, addr: &str, now: Instant, totals: BackendTotals) -> Rates {
        let mut map = self.inner.lock().expect("stats");
        let rates = match map.get(addr) {
            Some((then, prev, _)) => rates_between(prev, &totals, now.duration_since(*then)),
            None => Rates::default(),
        };
        map.insert(addr.to_owned(), (now, totals, rates));
        rates
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.inner.lock().expect("stats").retain(|k, _| keep(k));
    }
}

fn rates_between(a: &BackendTotals, b: &BackendTotals, dt: Duration) -> Rates {
    let queries = b.queries.saturating_sub(a.queries);
    let secs = dt.as_secs_f64();
    if queries == 0 || secs <= 0.0 {
        return Rates::default();
    }
    let errors = b.errors.saturating_sub(a.errors);
    let bounds = query_buckets();
    let target = (queries as f64 * 0.99).ceil() as u64;
    let mut p99 = bounds.last().copied();
    for (i, bound) in bounds.iter().enumerate() {
        let n = b.buckets.get(i).copied().unwrap_or(0) - a.buckets.get(i).copied().unwrap_or(0);
        if n >= target {
            p99 = Some(*bound);
            break;
        }
    }
    Rates {
        qps: queries as f64 / secs,
        error_rate: (errors as f64 / queries as f64).min(1.0),
        p99_ms: p99.map(|s| s * 1000.0),
    }
}

/// Samples every backend each [`INTERVAL`] until `shutdown`.
pub fn start(stats: Arc<Stats>, ctx: Arc<ProxyContext>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let list = ctx.backends.snapshot();
            let now = Instant::now();
            let t_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for b in list.iter() {
                let rates = stats.sample(&b.addr, now, b.metrics.totals());
                stats
                    .history
                    .record_backend(&b.addr, t_ms, rates, b.sessions());
            }
            stats.history.record_sessions(t_ms, ctx.active_sessions());
            let mut pending = std::collections::HashMap::new();
            for e in ctx.registry.entries() {
                if let Some(r) = e.pending_redirect() {
                    let to = r.target.unwrap_or_default();
                    *pending.entry((e.backend(), to, r.reason)).or_insert(0) += 1;
                }
            }
            ctx.metrics.set_pending_migrations(&pending);
            stats.retain(|a| list.iter().any(|b| b.addr == a));
            stats.history.retain(|a| list.iter().any(|b| b.addr == a));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = crate::timer::sleep(INTERVAL) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_two_samples() {
        let n = query_buckets().len();
        let a = BackendTotals {
            queries: 100,
            errors: 1,
            buckets: vec![0; n],
        };
        // 200 more queries, all between the 1st and 2nd bucket bounds, 2 of them errors.
        let mut buckets = vec![200; n];
        buckets[0] = 0;
        let b = BackendTotals {
            queries: 300,
            errors: 3,
            buckets,
        };
        let r = rates_between(&a, &b, Duration::from_secs(2));
        assert_eq!(r.qps, 100.0);
        assert_eq!(r.error_rate, 0.01);
        assert_eq!(r.p99_ms, Some(query_buckets()[1] * 1000.0));
        let idle = rates_between(&b, &b, Duration::from_secs(2));
        assert_eq!(idle.p99_ms, None);
    }
}
