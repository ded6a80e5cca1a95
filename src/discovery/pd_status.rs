//! Whether PD answers, since when, and the last error: shared with routing (to explain why no
//! backend is available) and the health API, and the one place that logs PD outages, so an
//! outage costs one WARN, one summary a minute, and one INFO when PD is back.

use super::backoff::human_duration;
use crate::logging::rate::RateLimiter;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdState {
    /// No attempt has finished yet.
    Connecting,
    Reachable,
    Unreachable,
}

/// A copy of the PD state for reports.
#[derive(Debug, Clone)]
pub struct PdSnapshot {
    pub endpoints: Vec<String>,
    pub state: PdState,
    /// When the current state began.
    pub since: SystemTime,
    /// The last error, kept after PD is back so reports can show what happened.
    pub last_error: String,
    /// Failed attempts in the current (or last) outage.
    pub failed_attempts: u64,
}

pub struct PdStatus {
    endpoints: Vec<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug, PartialEq)]
enum Report {
    Quiet,
    Connected,
    Lost,
    StillDown { lasted: Duration, attempts: u64 },
    Back { lasted: Duration, attempts: u64 },
}

struct Inner {
    state: PdState,
    since: SystemTime,
    since_at: Instant,
    last_error: String,
    attempts: u64,
    summary: RateLimiter,
}

impl Inner {
    fn new(now: Instant, wall: SystemTime) -> Self {
        Self {
            state: PdState::Connecting,
            since: wall,
            since_at: now,
            last_error: String::new(),
            attempts: 0,
            summary: RateLimiter::new(1, SUMMARY_EVERY),
        }
    }

    fn fail(&mut self, now: Instant, wall: SystemTime, err: &str) -> Report {
        self.last_error = err.to_owned();
        if self.state != PdState::Unreachable {
            self.state = PdState::Unreachable;
            self.since = wall;
            self.since_at = now;
            self.attempts = 1;
            self.summary.mark(now);
            return Report::Lost;
        }
        self.attempts += 1;
        if self.summary.allow(now) {
            Report::StillDown {
                lasted: now.saturating_duration_since(self.since_at),
                attempts: self.attempts,
            }
        } else {
            Report::Quiet
        }
    }

    fn succeed(&mut self, now: Instant, wall: SystemTime) -> Report {
        let report = match self.state {
            PdState::Reachable => return Report::Quiet,
            PdState::Connecting => Report::Connected,
            PdState::Unreachable => Report::Back {
                lasted: now.saturating_duration_since(self.since_at),
                attempts: self.attempts,
            },
        };
        self.state = PdState::Reachable;
        self.since = wall;
        self.since_at = now;
        report
    }
}

impl PdStatus {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            inner: Mutex::new(Inner::new(Instant::now(), SystemTime::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn addrs(&self) -> String {
        self.endpoints.join(",")
    }

    /// Records a failed attempt to reach PD and logs it if it is news.
    pub fn record_failure(&self, err: &str) {
        let report = self.lock().fail(Instant::now(), SystemTime::now(), err);
        match report {
            Report::Lost => warn!(
                pd = %self.addrs(),
                error = %err,
                "PD is unreachable; serving static backends and the last known TiDB list, retrying in the background"
            ),
            Report::StillDown { lasted, attempts } => warn!(
                pd = %self.addrs(),
                "PD still unreachable for {}, {attempts} attempts, last error: {err}",
                human_duration(lasted)
            ),
            _ => {}
        }
    }

    /// Records a successful exchange with PD and logs it if PD was not known to be up.
    pub fn record_success(&self) {
        let report = self.lock().succeed(Instant::now(), SystemTime::now());
        match report {
            Report::Connected => info!(pd = %self.addrs(), "connected to PD"),
            Report::Back { lasted, attempts } => info!(
                pd = %self.addrs(),
                "PD is reachable again after {} and {attempts} failed attempts",
                human_duration(lasted)
            ),
            _ => {}
        }
    }

    pub fn is_reachable(&self) -> bool {
        self.lock().state == PdState::Reachable
    }

    pub fn snapshot(&self) -> PdSnapshot {
        let i = self.lock();
        PdSnapshot {
            endpoints: self.endpoints.clone(),
            state: i.state,
            since: i.since,
            last_error: i.last_error.clone(),
            failed_attempts: i.attempts,
        }
    }

    /// "PD at a:2379 has been unreachable for 3m (last error: ...)", or None while PD answers.
    pub fn unreachable_summary(&self) -> Option<String> {
        let i = self.lock();
        if i.state != PdState::Unreachable {
            return None;
        }
        Some(format!(
            "PD at {} has been unreachable for {} (last error: {})",
            self.addrs(),
            human_duration(i.since_at.elapsed()),
            i.last_error
        ))
    }
}

/// Routing sees PD through this trait, so `balance` does not import `discovery`.
impl crate::balance::SourceStatus for PdStatus {
    fn is_reachable(&self) -> bool {
        PdStatus::is_reachable(self)
    }

    fn unreachable_summary(&self) -> Option<String> {
        PdStatus::unreachable_summary(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_reports_once_then_once_a_minute_then_once_back() {
        let t0 = Instant::now();
        let w = SystemTime::now();
        let mut i = Inner::new(t0, w);
        assert_eq!(i.succeed(t0, w), Report::Connected);
        assert_eq!(i.succeed(t0, w), Report::Quiet);
        let s = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(i.fail(s(1), w, "refused"), Report::Lost);
        for n in 2..60 {
            assert_eq!(i.fail(s(n), w, "refused"), Report::Quiet);
        }
        assert_eq!(
            i.fail(s(61), w, "timeout"),
            Report::StillDown {
                lasted: Duration::from_secs(60),
                attempts: 60
            }
        );
        assert_eq!(i.fail(s(62), w, "timeout"), Report::Quiet);
        assert_eq!(i.last_error, "timeout");
        assert_eq!(
            i.succeed(s(71), w),
            Report::Back {
                lasted: Duration::from_secs(70),
                attempts: 61
            }
        );
        assert_eq!(i.fail(s(72), w, "refused"), Report::Lost, "a new outage");
    }

    #[test]
    fn summary_names_the_endpoints_and_the_error() {
        let p = PdStatus::new(vec!["pd1:2379".into(), "pd2:2379".into()]);
        assert!(p.unreachable_summary().is_none());
        assert_eq!(p.snapshot().state, PdState::Connecting);
        p.record_failure("connection refused");
        let s = p.unreachable_summary().unwrap();
        assert!(s.contains("pd1:2379,pd2:2379") && s.contains("connection refused"));
        assert!(!p.is_reachable());
        p.record_success();
        assert!(p.is_reachable() && p.unreachable_summary().is_none());
        assert_eq!(p.snapshot().last_error, "connection refused");
    }
}
