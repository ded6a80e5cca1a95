//! Load figures read from each TiDB's status-port `/metrics` (or from the Prometheus in PD's
//! topology): CPU, memory and query error rate, turned from counters into usage between two
//! readings, and dropped once they are stale so a TiDB whose metrics stop answering is
//! balanced on the remaining factors.

pub mod fetch;
pub mod parse;
pub mod prometheus;

pub use parse::Sample;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A backend's load as the policy scores it; `None` is missing or stale.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// CPU used, as a share of the TiDB's `maxprocs` (0.0 to 1.0 and more when it exceeds them).
    pub cpu: Option<f64>,
    /// Resident memory as a share of the TiDB's memory quota.
    pub memory: Option<f64>,
    /// Failed queries as a share of all queries since the previous reading.
    pub error_rate: Option<f64>,
}

/// The last reading and the figures derived from it, per backend address.
#[derive(Debug, Default)]
pub struct LoadTracker {
    backends: HashMap<String, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    at: Instant,
    sample: Sample,
    load: Load,
}

impl LoadTracker {
    /// Records a reading. Rates need two readings, so the first gives memory only; a counter
    /// that went down (the TiDB restarted) gives no rate until the next reading.
    pub fn observe(&mut self, addr: &str, at: Instant, sample: Sample) {
        let memory = match (sample.resident_bytes, sample.memory_quota_bytes) {
            (Some(rss), Some(quota)) if quota > 0.0 => Some(rss / quota),
            _ => None,
        };
        let mut load = Load {
            memory,
            ..Load::default()
        };
        if let Some(prev) = self.backends.get(addr) {
            let secs = at.duration_since(prev.at).as_secs_f64();
            let delta = |now: Option<f64>, before: Option<f64>| match (now, before) {
                (Some(n), Some(b)) if n >= b => Some(n - b),
                _ => None,
            };
            if secs > 0.0 {
                if let (Some(cpu), Some(procs)) = (
                    delta(sample.cpu_seconds, prev.sample.cpu_seconds),
                    sample.maxprocs.filter(|p| *p > 0.0),
                ) {
                    load.cpu = Some(cpu / secs / procs);
                }
            }
            let queries = delta(sample.queries, prev.sample.queries);
            let errors = delta(sample.query_errors, prev.sample.query_errors);
            load.error_rate = match (queries, errors) {
                (Some(q), Some(e)) if q > 0.0 => Some((e / q).min(1.0)),
                // No query since the last reading: nothing failed either.
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
        }
        self.backends
            .insert(addr.to_owned(), Tracked { at, sample, load });
    }

    /// Records figures that arrive as usage already (from Prometheus); a later `/metrics`
    /// reading starts its rates afresh.
    pub fn record(&mut self, addr: &str, at: Instant, load: Load) {
        self.backends.insert(
            addr.to_owned(),
            Tracked {
                at,
                sample: Sample::default(),
                load,
            },
        );
    }

    /// The figures for `addr`, or none at all when the last reading is older than `stale_after`.
    pub fn load(&self, addr: &str, now: Instant, stale_after: Duration) -> Load {
        match self.backends.get(addr) {
            Some(t) if now.saturating_duration_since(t.at) <= stale_after => t.load,
            _ => Load::default(),
        }
    }

    /// Forgets backends no longer in the list.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.backends.retain(|a, _| keep(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: f64, rss: f64, queries: f64, errors: f64) -> Sample {
        Sample {
            cpu_seconds: Some(cpu),
            maxprocs: Some(4.0),
            resident_bytes: Some(rss),
            memory_quota_bytes: Some(1000.0),
            queries: Some(queries),
            query_errors: Some(errors),
        }
    }

    #[test]
    fn rates_come_from_two_readings_and_go_stale() {
        let t0 = Instant::now();
        let mut t = LoadTracker::default();
        t.observe("a", t0, sample(10.0, 500.0, 100.0, 0.0));
        let first = t.load("a", t0, Duration::from_secs(10));
        assert_eq!(
            (first.cpu, first.memory, first.error_rate),
            (None, Some(0.5), None)
        );
        // 2 CPU seconds a second on 4 procs: half; 30 of 60 queries failed.
        t.observe(
            "a",
            t0 + Duration::from_secs(2),
            sample(14.0, 900.0, 160.0, 30.0),
        );
        let l = t.load("a", t0 + Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(l.cpu, Some(0.5));
        assert_eq!(l.memory, Some(0.9));
        assert_eq!(l.error_rate, Some(0.5));
        assert_eq!(
            t.load("a", t0 + Duration::from_secs(13), Duration::from_secs(10)),
            Load::default()
        );
        assert_eq!(t.load("b", t0, Duration::from_secs(10)), Load::default());
    }

    #[test]
    fn a_restart_or_missing_figures_give_no_rate() {
        let t0 = Instant::now();
        let mut t = LoadTracker::default();
        t.observe("a", t0, sample(100.0, 1.0, 100.0, 0.0));
        t.observe(
            "a",
            t0 + Duration::from_secs(1),
            sample(1.0, 1.0, 100.0, 0.0),
        );
        let l = t.load("a", t0 + Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!((l.cpu, l.error_rate), (None, Some(0.0)));
        let bare = Sample::default();
        t.observe("a", t0 + Duration::from_secs(2), bare);
        assert_eq!(
            t.load("a", t0 + Duration::from_secs(2), Duration::from_secs(10)),
            Load::default()
        );
        t.retain(|a| a != "a");
        assert_eq!(
            t.load("a", t0 + Duration::from_secs(2), Duration::from_secs(10)),
            Load::default()
        );
    }
}
