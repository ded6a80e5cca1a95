//! Logging of errors that backends return to queries: one WARN line each with the connection,
//! user, backend, code, message and statement digest. In the main log they are rate-limited
//! so a failing application cannot flood it; `[log.query-error-file]` takes them all.
//! The backend's message is logged with its quoted literals replaced by `'?'`: a mistyped
//! `ALTER USER ... IDENTIFIED BY '...'` or a duplicate key would otherwise put a password or
//! a row's value in the log. The code and the statement digest say what failed.

pub use crate::logging::rate::{Admit, RateLimiter};
use crate::logging::QUERY_ERROR_TARGET;
use std::time::{Duration, Instant};
use tracing::warn;

/// Lines per window in the main log.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

pub struct QueryErrorLog {
    limiter: Option<RateLimiter>,
}

/// What one failed statement leaves in the log.
pub struct QueryError<'a> {
    pub conn: u64,
    pub user: &'a str,
    pub backend: &'a str,
    pub command: &'static str,
    pub code: u16,
    pub message: &'a str,
    pub digest: &'a str,
}

impl QueryErrorLog {
    /// `to_own_file`: `[log.query-error-file]` is set, so nothing is rate-limited.
    pub fn new(to_own_file: bool) -> Self {
        Self {
            limiter: (!to_own_file).then(|| RateLimiter::new(LINES_PER_WINDOW, WINDOW)),
        }
    }

    pub fn record(&self, e: &QueryError<'_>) {
        let dropped = match self.limiter.as_ref().map(|l| l.admit(Instant::now())) {
            Some(Admit::No) => return,
            Some(Admit::Yes { dropped }) => dropped,
            None => 0,
        };
        warn!(
            target: QUERY_ERROR_TARGET,
            conn = e.conn,
            user = e.user,
            backend = e.backend,
            cmd = e.command,
            code = e.code,
            error = %scrub_literals(e.message),
            digest = e.digest,
            suppressed = dropped,
            "query failed on backend"
        );
    }
}

/// The message with every quoted literal ('...', "...") shown as '?'. A syntax error's
/// "near '...' at line N" quotes the statement itself, quotes and all, so everything between
/// "near '" and the last "' at line" goes.
pub fn scrub_literals(message: &str) -> String {
    let (head, tail) = match message.find(" near '") {
        Some(i) => {
            let rest = &message[i + 7..];
            let after = rest.rfind("' at line").map_or("'", |j| &rest[j..]);
            (&message[..i + 6], Some(after))
        }
        None => (message, None),
    };
    let mut out = String::with_capacity(message.len());
    let mut chars = head.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        // An apostrophe inside a word ("doesn't") opens nothing.
        if (c != '\'' && c != '"') || prev.is_alphanumeric() {
            out.push(c);
            prev = c;
            continue;
        }
        prev = '\'';
        // Skip to the closing quote; a doubled quote or a backslash escape stays inside.
        loop {
            match chars.next() {
                None => break,
                Some('\\') => {
                    chars.next();
                }
                Some(q) if q == c => {
                    if chars.peek() == Some(&c) {
                        chars.next();
                    } else {
                        break;
                    }
                }
                Some(_) => {}
            }
        }
        out.push_str("'?'");
    }
    if let Some(after) = tail {
        out.push_str("'?");
        out.push_str(after);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_scrubbed_and_the_rest_kept() {
        assert_eq!(
            scrub_literals("Duplicate entry 'alice@example.com' for key 'email'"),
            "Duplicate entry '?' for key '?'"
        );
        let syntax = "You have an error in your SQL syntax; check the manual that corresponds to \
                      your MariaDB server version for the right syntax to use near \
                      'IDENTIFIED BY 'hunter2'' at line 1";
        let s = scrub_literals(syntax);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.ends_with("near '?' at line 1"), "{s}");
        assert_eq!(
            scrub_literals("Table 'db.t' doesn't exist"),
            "Table '?' doesn't exist"
        );
        assert_eq!(scrub_literals("a 'it''s' b \"x\\\"y\" c"), "a '?' b '?' c");
        assert_eq!(
            scrub_literals("Unknown column `secret_col`"),
            "Unknown column `secret_col`"
        );
    }

    #[test]
    fn limiter_allows_a_burst_then_counts_what_it_drops() {
        let l = RateLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(matches!(l.admit(t0), Admit::Yes { dropped: 0 }));
        assert!(matches!(l.admit(t0), Admit::Yes { dropped: 0 }));
        assert!(matches!(l.admit(t0), Admit::No));
        assert!(matches!(l.admit(t0), Admit::No));
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(l.admit(t1), Admit::Yes { dropped: 2 }));
    }
}
