//! Retry pacing for PD: exponential backoff with jitter between attempts, and how an outage's
//! length reads in a log line.

use rand::Rng;
use std::time::Duration;

/// Doubles the wait after each failed attempt, up to a cap; a success starts over. Each wait
/// is drawn from the upper half of the current step, so proxies that lost PD together do not
/// reconnect in lockstep.
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
        self.next_delay_with(&mut rand::thread_rng())
    }

    fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        step / 2 + step.mul_f64(rng.gen_range(0.0..=0.5))
    }

    pub fn reset(&mut self) {
        self.next = self.base;
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
        let steps = [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000];
        for step in steps {
            let d = b.next_delay().as_millis();
            assert!(
                step / 2 <= d && d <= step,
                "{d} ms outside the step of {step} ms"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_the_waits() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let waits: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(4), Duration::from_secs(4)))
            .map(|mut b| b.next_delay_with(&mut rng))
            .collect();
        assert!(
            waits.len() > 1,
            "twenty fresh backoffs all waited {waits:?}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h5m");
    }
}
