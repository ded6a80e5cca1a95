//! Retry pacing for PD: exponential backoff between attempts, and a rate limiter that keeps
//! repeated outage reports to one line per interval.

use std::time::{Duration, Instant};

/// Doubles the wait after each failed attempt, up to a cap; a success starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.min(cap);
        Self {
            base,
            cap,
            next: base,
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Allows one event per `every`; the caller passes the clock so tests need no sleeping.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// True when an event may be emitted now; emitting is assumed and starts a new interval.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// Counts an event emitted by other means (the first report of an outage) as the last one.
    pub fn mark(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// "45s", "3m", "2h5m": how long an outage has lasted, for humans.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let got: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn rate_limit_allows_one_event_per_interval() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert!(r.allow(t0));
        assert!(!r.allow(t0 + Duration::from_secs(1)));
        assert!(!r.allow(t0 + Duration::from_secs(59)));
        assert!(r.allow(t0 + Duration::from_secs(60)));
        assert!(!r.allow(t0 + Duration::from_secs(61)));
        r.mark(t0 + Duration::from_secs(200));
        assert!(!r.allow(t0 + Duration::from_secs(230)));
        assert!(r.allow(t0 + Duration::from_secs(260)));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h5m");
    }
}
