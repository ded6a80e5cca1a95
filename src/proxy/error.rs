//! Errors the proxy itself reports to clients: each class has its own MySQL code and SQLSTATE
//! (class 08 for connection problems, so drivers and pools retry; 40001 where the session goes
//! on and the client should run its transaction again) and a sentence with the fix.
//! docs/errors.md is the same table for users.
//!
//! After a backend failure an error says only what is proven: the transaction was rolled back,
//! the statement was not executed, or its outcome is unknown. Never "rolled back" for a COMMIT
//! or an autocommit write whose answer was lost: it may have committed.
//!
//! Every code is in a server's range: libmariadb (the stock `mariadb` CLI) and several drivers
//! replace a server-sent code in 2000-2999, the client library's own range, with "malformed
//! packet", which would hide the sentence.

use crate::protocol::response::ErrPacket;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    TooManyConnections {
        limit: u64,
    },
    /// More connections from the client's IP are in their handshake than max-handshakes-per-source.
    TooManyHandshakes {
        limit: u64,
    },
    HandshakeMalformed {
        reason: String,
    },
    /// The SQL port requires TLS with a client certificate and the client connected in clear.
    ClientTlsRequired,
    UnsupportedCommand {
        command: &'static str,
    },
    ShuttingDown,
    HandshakeTimeout {
        secs: u64,
    },
    NoBackendAvailable {
        detail: String,
    },
    BackendConnectFailed {
        attempts: String,
    },
    /// The backend connection broke during login or COM_CHANGE_USER.
    BackendLost {
        backend: String,
        detail: String,
    },
    /// The backend failed inside an explicit transaction before any COMMIT was sent: the
    /// server rolls an open transaction back when its connection ends.
    TxnRolledBack {
        backend: String,
        detail: String,
        next: Next,
    },
    /// The statement may or may not have taken effect: it was sent and its answer was lost.
    OutcomeUnknown {
        backend: String,
        detail: String,
        next: Next,
    },
    /// The statement never reached a backend, outside any transaction.
    NotExecuted {
        backend: String,
        detail: String,
        next: Next,
    },
    FailoverTimeout {
        backend: String,
        secs: u64,
    },
    BackendTlsUnavailable {
        backend: String,
        detail: String,
    },
    BackendMalformed {
        backend: String,
        detail: String,
    },
    /// A TiDB went away: the session's state lived in it and no other server can rebuild it.
    TidbStateLost {
        backend: String,
        detail: String,
        /// Whether a statement was running (its outcome unknown) or the session was idle (the
        /// statement that finds out was not run).
        in_flight: bool,
    },
}

/// What became of the session after its backend failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Rebuilt on this backend with all its state; the client may go on.
    MovedTo(String),
    /// Closed, for this reason (which backend refused it and why, or none was healthy).
    Closed(String),
}

impl Next {
    fn continues(&self) -> bool {
        matches!(self, Next::MovedTo(_))
    }
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Next::MovedTo(to) => write!(
                f,
                "The session continues on backend {to} with its database, settings, user \
                 variables and prepared statements"
            ),
            Next::Closed(why) => write!(
                f,
                "The session could not be rebuilt elsewhere ({why}) and is closed"
            ),
        }
    }
}

impl ClientError {
    pub fn code(&self) -> u16 {
        match self {
            ClientError::TooManyConnections { .. } | ClientError::TooManyHandshakes { .. } => 1040,
            ClientError::HandshakeMalformed { .. } => 1043,
            ClientError::ClientTlsRequired => 9005,
            ClientError::UnsupportedCommand { .. } => 1047,
            ClientError::ShuttingDown => 1053,
            ClientError::HandshakeTimeout { .. } => 1159,
            ClientError::NoBackendAvailable { .. } => 9001,
            ClientError::BackendConnectFailed { .. } => 9002,
            ClientError::BackendLost { .. } => 1158,
            ClientError::TxnRolledBack { .. } => 1927,
            ClientError::OutcomeUnknown { .. } => 9003,
            ClientError::NotExecuted { .. } => 9004,
            ClientError::FailoverTimeout { .. } => 1152,
            ClientError::BackendTlsUnavailable { .. } => 3159,
            ClientError::BackendMalformed { .. } => 1156,
            ClientError::TidbStateLost { .. } => 1184,
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            // "Server rejected the connection": a refusal, not a broken link to retry.
            ClientError::TooManyConnections { .. }
            | ClientError::TooManyHandshakes { .. }
            | ClientError::ClientTlsRequired => "08004",
            // "Transaction resolution unknown": drivers treat it as a lost connection whose
            // last statement may have committed.
            ClientError::OutcomeUnknown { .. } => "08007",
            // The session goes on and nothing of the transaction (or the lone statement) took
            // effect: the class drivers answer by running the transaction again.
            ClientError::TxnRolledBack { next, .. } | ClientError::NotExecuted { next, .. }
                if next.continues() =>
            {
                "40001"
            }
            _ => "08S01",
        }
    }

    /// A short stable label for logs and the disconnect metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::TooManyConnections { .. } => "too_many_connections",
            ClientError::TooManyHandshakes { .. } => "too_many_handshakes",
            ClientError::HandshakeMalformed { .. } => "handshake_malformed",
            ClientError::ClientTlsRequired => "client_tls_required",
            ClientError::UnsupportedCommand { .. } => "unsupported_command",
            ClientError::ShuttingDown => "shutting_down",
            ClientError::HandshakeTimeout { .. } => "handshake_timeout",
            ClientError::NoBackendAvailable { .. } => "no_backend",
            ClientError::BackendConnectFailed { .. } => "backend_connect_failed",
            ClientError::BackendLost { .. } => "backend_lost",
            ClientError::TxnRolledBack { .. } => "txn_rolled_back",
            ClientError::OutcomeUnknown { .. } => "outcome_unknown",
            ClientError::NotExecuted { .. } => "not_executed",
            ClientError::FailoverTimeout { .. } => "failover_timeout",
            ClientError::BackendTlsUnavailable { .. } => "backend_tls",
            ClientError::BackendMalformed { .. } => "backend_malformed",
            ClientError::TidbStateLost { .. } => "tidb_state_lost",
        }
    }

    pub fn to_packet(&self) -> ErrPacket {
        ErrPacket::new(self.code(), self.sqlstate(), self.to_string())
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::TooManyHandshakes { limit } => write!(
                f,
                "Too many connections from your address are still logging in \
                 ([proxy] max-handshakes-per-source = {limit}). Retry in a moment."
            ),
            ClientError::TooManyConnections { limit } => write!(
                f,
                "Too many connections: the proxy already serves max-connections = {limit} \
                 sessions. Retry later, close idle connections, or raise [proxy] max-connections."
            ),
            ClientError::HandshakeMalformed { reason } => write!(
                f,
                "Bad handshake: the proxy could not read the client's handshake response \
                 ({reason}). Check that the client speaks the MySQL protocol to this port."
            ),
            ClientError::ClientTlsRequired => write!(
                f,
                "This proxy port accepts only TLS connections with a client certificate \
                 ([security.server-tls] ca is set). Connect with TLS and your certificate \
                 (mariadb --ssl --ssl-cert=... --ssl-key=...; mysql --ssl-mode=REQUIRED \
                 --ssl-cert=... --ssl-key=...)."
            ),
            ClientError::UnsupportedCommand { command } => write!(
                f,
                "Command {command} is not supported through the proxy (replication and \
                 server-internal commands are refused). Connect to the backend directly for it."
            ),
            ClientError::ShuttingDown => write!(
                f,
                "The proxy is shutting down and accepts no new sessions. Reconnect: your \
                 load balancer or another proxy instance will take the session."
            ),
            ClientError::HandshakeTimeout { secs } => write!(
                f,
                "Handshake timeout: the client did not finish its handshake within {secs} s \
                 ([proxy] client-handshake-timeout). Check the client and the network."
            ),
            ClientError::NoBackendAvailable { detail } => write!(
                f,
                "No backend available: {detail}. Check that the backends are running and \
                 reachable, and [proxy] backend-addrs or PD discovery."
            ),
            ClientError::BackendConnectFailed { attempts } => write!(
                f,
                "Could not connect to any backend: {attempts}. Check that the backends are up \
                 and listening, and [proxy] backend-connect-timeout."
            ),
            ClientError::BackendLost { backend, detail } => write!(
                f,
                "Lost connection to backend {backend} ({detail}) before the session was ready; \
                 the session is closed. Reconnect."
            ),
            ClientError::TxnRolledBack {
                backend,
                detail,
                next,
            } => {
                write!(
                    f,
                    "Backend {backend} failed ({detail}) inside your transaction before it was \
                     committed, so the transaction was rolled back: nothing in it was \
                     committed. {next}. "
                )?;
                match next {
                    Next::MovedTo(_) => write!(f, "Run the whole transaction again."),
                    Next::Closed(_) => write!(f, "Reconnect and run the whole transaction again."),
                }
            }
            ClientError::OutcomeUnknown {
                backend,
                detail,
                next,
            } => {
                write!(
                    f,
                    "Backend {backend} failed ({detail}) after your statement was sent and \
                     before its answer arrived: whether it took effect (or committed) is \
                     unknown. {next}. "
                )?;
                match next {
                    Next::MovedTo(_) => write!(f, "Check its effect before running it again."),
                    Next::Closed(_) => {
                        write!(f, "Reconnect and check its effect before running it again.")
                    }
                }
            }
            ClientError::NotExecuted {
                backend,
                detail,
                next,
            } => {
                write!(
                    f,
                    "Backend {backend} failed ({detail}) before your statement reached it: \
                     the statement was not executed. {next}. "
                )?;
                match next {
                    Next::MovedTo(_) => write!(f, "Run the statement again."),
                    Next::Closed(_) => write!(f, "Reconnect and run the statement again."),
                }
            }
            ClientError::FailoverTimeout { backend, secs } => write!(
                f,
                "The session was closed: its backend {backend} is in [proxy] fail-backend-list \
                 and the session could not move to another backend within failover-timeout = \
                 {secs} s (it stayed in a transaction or held a lock). Reconnect."
            ),
            ClientError::BackendTlsUnavailable { backend, detail } => write!(
                f,
                "TLS to backend {backend} is required but failed: {detail}. Enable TLS on the \
                 backend, fix [security.sql-tls], or set [security] require-backend-tls = false."
            ),
            ClientError::BackendMalformed { backend, detail } => write!(
                f,
                "Backend {backend} sent a malformed packet ({detail}); the session was closed. \
                 Check the backend's version and logs."
            ),
            ClientError::TidbStateLost {
                backend,
                detail,
                in_flight,
            } => {
                if *in_flight {
                    write!(
                        f,
                        "TiDB {backend} went away while running your statement ({detail}), so \
                         whether it completed is unknown. "
                    )?;
                } else {
                    write!(f, "TiDB {backend} went away ({detail}). ")?;
                }
                write!(
                    f,
                    "The session's state (variables, prepared statements, any open \
                     transaction) lived in that TiDB and cannot be rebuilt on another one, so \
                     the session was closed"
                )?;
                if *in_flight {
                    write!(f, ". Reconnect, check, and retry.")
                } else {
                    write!(
                        f,
                        "; your statement was not run. Reconnect and run it again."
                    )
                }
            }
        }
    }
}

impl std::error::Error for ClientError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_failure(next: Next) -> [ClientError; 3] {
        let (backend, detail) = ("b".to_owned(), "x".to_owned());
        [
            ClientError::TxnRolledBack {
                backend: backend.clone(),
                detail: detail.clone(),
                next: next.clone(),
            },
            ClientError::OutcomeUnknown {
                backend: backend.clone(),
                detail: detail.clone(),
                next: next.clone(),
            },
            ClientError::NotExecuted {
                backend,
                detail,
                next,
            },
        ]
    }

    #[test]
    fn every_class_has_its_own_code_and_a_state_drivers_act_on() {
        let mut all = vec![
            ClientError::TooManyConnections { limit: 1 },
            ClientError::HandshakeMalformed { reason: "x".into() },
            ClientError::ClientTlsRequired,
            ClientError::UnsupportedCommand {
                command: "binlog_dump",
            },
            ClientError::ShuttingDown,
            ClientError::HandshakeTimeout { secs: 1 },
            ClientError::NoBackendAvailable { detail: "x".into() },
            ClientError::BackendConnectFailed {
                attempts: "x".into(),
            },
            ClientError::BackendLost {
                backend: "b".into(),
                detail: "x".into(),
            },
            ClientError::FailoverTimeout {
                backend: "b".into(),
                secs: 1,
            },
            ClientError::BackendTlsUnavailable {
                backend: "b".into(),
                detail: "x".into(),
            },
            ClientError::BackendMalformed {
                backend: "b".into(),
                detail: "x".into(),
            },
            ClientError::TidbStateLost {
                backend: "b".into(),
                detail: "x".into(),
                in_flight: false,
            },
        ];
        all.extend(after_failure(Next::Closed("none healthy".into())));
        let mut codes: Vec<u16> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        all.extend(after_failure(Next::MovedTo("c".into())));
        for e in &all {
            let state = e.sqlstate();
            assert!(
                state.starts_with("08") || state == "40001",
                "{e:?} has {state}"
            );
            assert_ne!(e.code(), 1105);
            assert!(
                !(2000..3000).contains(&e.code()),
                "{e:?} uses a client-range code"
            );
            let p = e.to_packet();
            assert_eq!(ErrPacket::parse(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn failure_messages_say_only_what_is_known() {
        let [rolled, unknown, not_run] = after_failure(Next::MovedTo("c:1".into()));
        assert_eq!(rolled.sqlstate(), "40001");
        assert_eq!(not_run.sqlstate(), "40001");
        assert_eq!(unknown.sqlstate(), "08007");
        for e in [&rolled, &unknown, &not_run] {
            let m = e.to_string();
            assert!(m.contains("continues on backend c:1"), "{m}");
            assert!(
                !m.contains("econnect"),
                "a continuing session must not say reconnect: {m}"
            );
        }
        assert!(!unknown.to_string().contains("rolled back"));
        assert!(!not_run.to_string().contains("rolled back"));
        let [rolled, unknown, not_run] = after_failure(Next::Closed("no healthy backend".into()));
        assert_eq!(rolled.sqlstate(), "08S01");
        assert_eq!(not_run.sqlstate(), "08S01");
        assert_eq!(unknown.sqlstate(), "08007");
        for e in [&rolled, &unknown, &not_run] {
            let m = e.to_string();
            assert!(m.contains("(no healthy backend) and is closed"), "{m}");
            assert!(!m.contains("continues"), "{m}");
        }
    }
}
