//! The liveness monitor behind TiProxy's `tiproxy_monitor_*` families: a thread that wakes
//! every second, counts a keep-alive every fifth tick, and counts each time the wall clock is
//! seen to go backwards (TiProxy alerts on it: leases and certificates misbehave then). Also
//! the `server_event` start/close counts and the pending-migration gauge's refresh.

use super::Metrics;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

const TICK: Duration = Duration::from_secs(1);
const TICKS_PER_KEEP_ALIVE: u32 = 5;

/// Counts the `start` event and starts the monitor for these metrics; its thread ends once
/// the registry is dropped (the App that owned it is gone).
pub fn start(metrics: &Arc<Metrics>) {
    let m = metrics;
    m.server_event.with_label_values(&["start"]).inc();
    m.server_event.with_label_values(&["close"]);
    m.keep_alive.inc();
    super::runtime::refresh(m);
    let weak = Arc::downgrade(metrics);
    let spawned = std::thread::Builder::new()
        .name("metrics-monitor".into())
        .spawn(move || run(weak));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics monitor thread");
    }
}

/// Counts the `close` event (the proxy began to shut down).
pub fn closing(m: &Metrics) {
    m.server_event.with_label_values(&["close"]).inc();
}

fn run(metrics: Weak<Metrics>) {
    let mut last = SystemTime::now();
    let mut ticks = 0u32;
    loop {
        std::thread::sleep(TICK);
        let Some(m) = metrics.upgrade() else {
            return;
        };
        let now = SystemTime::now();
        if clock_went_back(last, now) {
            m.time_jump_back.inc();
            tracing::warn!("the system clock went backwards");
        }
        last = now;
        super::runtime::refresh(&m);
        ticks += 1;
        if ticks.is_multiple_of(TICKS_PER_KEEP_ALIVE) {
            m.keep_alive.inc();
        }
    }
}

fn clock_went_back(before: SystemTime, now: SystemTime) -> bool {
    now < before
}

pub(super) type PendingKey = (String, String, &'static str);

impl Metrics {
    /// Sets the pending-migration gauge to `(from, to, reason) -> sessions`. A series seen
    /// before drops to 0 rather than vanishing, as TiProxy's (counted up and down) does.
    pub fn set_pending_migrations(&self, counts: &std::collections::HashMap<PendingKey, i64>) {
        let g = &self.pending_migrate;
        let mut seen = self.pending_seen.lock().expect("pending series");
        for key in seen.iter() {
            if !counts.contains_key(key) {
                g.with_label_values(&[key.0.as_str(), key.1.as_str(), key.2])
                    .set(0);
            }
        }
        for (key, n) in counts {
            g.with_label_values(&[key.0.as_str(), key.1.as_str(), key.2])
                .set(*n);
            if !seen.contains(key) {
                seen.push(key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backwards_is_detected_forwards_is_not() {
        let t = SystemTime::now();
        assert!(clock_went_back(t, t - Duration::from_millis(1)));
        assert!(!clock_went_back(t, t + TICK));
        assert!(!clock_went_back(t, t));
    }
}
