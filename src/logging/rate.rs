//! The one log-line rate limiter: at most `limit` lines per window, counting what it drops so
//! the next admitted line can say how many were suppressed. Query errors, refused sources and
//! PD outage summaries all use it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fixed-window limiter; a window opens at the first line admitted after the previous one
/// closed. The caller passes the clock so tests need no sleeping.
pub struct RateLimiter {
    state: Mutex<Window>,
    limit: u32,
    window: Duration,
}

struct Window {
    start: Option<Instant>,
    used: u32,
    dropped: u64,
}

pub enum Admit {
    /// Log it; `dropped` lines were suppressed since the last admitted one.
    Yes {
        dropped: u64,
    },
    No,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            state: Mutex::new(Window {
                start: None,
                used: 0,
                dropped: 0,
            }),
            limit,
            window,
        }
    }

    pub fn admit(&self, now: Instant) -> Admit {
        let mut w = self.state.lock().expect("rate limiter");
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
        {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used < self.limit {
            w.used += 1;
            Admit::Yes {
                dropped: std::mem::take(&mut w.dropped),
            }
        } else {
            w.dropped += 1;
            Admit::No
        }
    }

    /// True when a line may be emitted now.
    pub fn allow(&self, now: Instant) -> bool {
        matches!(self.admit(now), Admit::Yes { .. })
    }

    /// Opens a full window at `now`: a line emitted by other means (the first report of an
    /// outage) counts as the whole window's allowance.
    pub fn mark(&self, now: Instant) {
        let mut w = self.state.lock().expect("rate limiter");
        w.start = Some(now);
        w.used = self.limit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_mark() {
        let t0 = Instant::now();
        let r = RateLimiter::new(1, Duration::from_secs(60));
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
    fn counts_what_it_drops() {
        let t0 = Instant::now();
        let r = RateLimiter::new(2, Duration::from_secs(1));
        assert!(matches!(r.admit(t0), Admit::Yes { dropped: 0 }));
        assert!(matches!(r.admit(t0), Admit::Yes { dropped: 0 }));
        assert!(matches!(r.admit(t0), Admit::No));
        assert!(matches!(r.admit(t0), Admit::No));
        let later = t0 + Duration::from_secs(1);
        assert!(matches!(r.admit(later), Admit::Yes { dropped: 2 }));
    }
}
