//! Who may use the admin paths: HTTP basic auth when `[api] user/password` are set, callers on
//! this host otherwise; failed attempts are logged with the caller's address and limited per
//! address, so the password cannot be guessed at network speed.

use base64::Engine;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts one address may make per window before it is refused outright.
pub const FAILURES_PER_WINDOW: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at once; past it, finished windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// Whether an `Authorization` header value carries exactly these credentials.
pub fn allows(header: Option<&str>, user: &str, password: &str) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(mut raw) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let mut expected = format!("{user}:{password}").into_bytes();
    let ok = constant_time_eq(&raw, &expected);
    zeroize::Zeroize::zeroize(&mut raw);
    zeroize::Zeroize::zeroize(&mut expected);
    ok
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Failed authentications per caller address in fixed windows.
#[derive(Default)]
pub struct Failures {
    by_addr: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    /// Seconds until `ip` may try again, when it has used up its window.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.by_addr.lock().expect("auth failures");
        let (start, n) = map.get(&ip)?;
        let elapsed = now.duration_since(*start);
        (*n >= FAILURES_PER_WINDOW && elapsed < FAILURE_WINDOW)
            .then(|| (FAILURE_WINDOW - elapsed).as_secs().max(1))
    }

    /// Counts one failure; returns how many `ip` has made in the current window.
    pub fn record(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.by_addr.lock().expect("auth failures");
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_user_and_password() {
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:pw")
        );
        assert!(allows(Some(&good), "admin", "pw"));
        assert!(!allows(Some(&good), "admin", "other"));
        assert!(!allows(Some("Basic !!!"), "admin", "pw"));
        assert!(!allows(None, "admin", "pw"));
    }

    #[test]
    fn failures_block_an_address_for_the_rest_of_its_window() {
        let f = Failures::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FAILURES_PER_WINDOW {
            assert!(f.blocked(a, t0).is_none());
            f.record(a, t0);
        }
        assert!(f.blocked(a, t0).is_some());
        assert!(
            f.blocked(b, t0).is_none(),
            "other addresses are not affected"
        );
        assert!(f.blocked(a, t0 + FAILURE_WINDOW).is_none());
        assert_eq!(f.record(a, t0 + FAILURE_WINDOW), 1);
    }
}
