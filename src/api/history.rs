//! The last minutes of per-backend rates and session counts, one point per stats sample, kept
//! in memory (a bounded ring per backend) for the dashboard's graphs.

use super::stats::Rates;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Points kept per series: five minutes at one sample every two seconds.
pub const KEEP: usize = 150;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Unix time of the sample, in milliseconds.
    pub t_ms: u64,
    pub qps: f64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
    pub sessions: u64,
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    backends: HashMap<String, VecDeque<Point>>,
    /// (t_ms, client sessions)
    sessions: VecDeque<(u64, u64)>,
}

fn push<T>(ring: &mut VecDeque<T>, v: T) {
    if ring.len() == KEEP {
        ring.pop_front();
    }
    ring.push_back(v);
}

impl History {
    pub fn record_backend(&self, addr: &str, t_ms: u64, rates: Rates, sessions: u64) {
        let mut g = self.inner.lock().expect("history");
        let ring = g.backends.entry(addr.to_owned()).or_default();
        let point = Point {
            t_ms,
            qps: rates.qps,
            error_rate: rates.error_rate,
            p99_ms: rates.p99_ms,
            sessions,
        };
        push(ring, point);
    }

    pub fn record_sessions(&self, t_ms: u64, sessions: u64) {
        push(
            &mut self.inner.lock().expect("history").sessions,
            (t_ms, sessions),
        );
    }

    /// Forgets backends that are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.inner
            .lock()
            .expect("history")
            .backends
            .retain(|k, _| keep(k));
    }

    /// `{"interval_ms", "sessions": [[t_ms, n]...], "backends": {addr: [Point...]}}`.
    pub fn snapshot(&self, interval_ms: u64) -> serde_json::Value {
        let g = self.inner.lock().expect("history");
        serde_json::json!({
            "interval_ms": interval_ms,
            "sessions": g.sessions,
            "backends": g.backends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_keep_the_latest_points_only() {
        let h = History::default();
        for i in 0..(KEEP as u64 + 10) {
            h.record_backend("a:1", i, Rates::default(), i);
            h.record_sessions(i, i);
        }
        h.record_backend("gone:1", 0, Rates::default(), 0);
        h.retain(|a| a == "a:1");
        let s = h.snapshot(2000);
        let points = s["backends"]["a:1"].as_array().unwrap();
        assert_eq!(points.len(), KEEP);
        assert_eq!(points[0]["t_ms"], 10);
        assert_eq!(s["sessions"].as_array().unwrap().len(), KEEP);
        assert!(s["backends"].get("gone:1").is_none());
    }
}
