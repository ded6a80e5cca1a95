//! Errors the proxy itself reports to clients: each class has its own MySQL code and SQLSTATE
//! (class 08 for connection problems, so drivers and pools retry) and a sentence with the fix.
//! docs/errors.md is the same table for users.
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
    HandshakeMalformed {
        reason: String,
    },
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
    BackendLost {
        backend: String,
        detail: String,
    },
    TxnRolledBack {
        backend: String,
        moved_to: Option<String>,
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

impl ClientError {
    pub fn code(&self) -> u16 {
        match self {
            ClientError::TooManyConnections { .. } => 1040,
            ClientError::HandshakeMalformed { .. } => 1043,
            ClientError::UnsupportedCommand { .. } => 1047,
            ClientError::ShuttingDown => 1053,
            ClientError::HandshakeTimeout { .. } => 1159,
            ClientError::NoBackendAvailable { .. } => 9001,
            ClientError::BackendConnectFailed { .. } => 9002,
            ClientError::BackendLost { .. } => 1158,
            ClientError::TxnRolledBack { .. } => 1927,
            ClientError::FailoverTimeout { .. } => 1152,
            ClientError::BackendTlsUnavailable { .. } => 3159,
            ClientError::BackendMalformed { .. } => 1156,
            ClientError::TidbStateLost { .. } => 1184,
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientError::TooManyConnections { .. } => "08004",
            _ => "08S01",
        }
    }

    /// A short stable label for logs and the disconnect metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::TooManyConnections { .. } => "too_many_connections",
            ClientError::HandshakeMalformed { .. } => "handshake_malformed",
            ClientError::UnsupportedCommand { .. } => "unsupported_command",
            ClientError::ShuttingDown => "shutting_down",
            ClientError::HandshakeTimeout { .. } => "handshake_timeout",
            ClientError::NoBackendAvailable { .. } => "no_backend",
            ClientError::BackendConnectFailed { .. } => "backend_connect_failed",
            ClientError::BackendLost { .. } => "backend_lost",
            ClientError::TxnRolledBack { .. } => "txn_rolled_back",
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
                "Lost connection to backend {backend} ({detail}). The statement may not have \
                 completed; reconnect and retry it."
            ),
            ClientError::TxnRolledBack { backend, moved_to } => match moved_to {
                Some(to) => write!(
                    f,
                    "Backend {backend} failed during your transaction, so the transaction was \
                     rolled back and nothing in it was committed. The session continues on \
                     {to} with its settings; run the whole transaction again."
                ),
                None => write!(
                    f,
                    "Backend {backend} failed during your transaction, so the transaction was \
                     rolled back and nothing in it was committed. No other backend could take \
                     the session; reconnect and run the whole transaction again."
                ),
            },
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

    #[test]
    fn every_class_has_its_own_code_and_connection_class_state() {
        let all = [
            ClientError::TooManyConnections { limit: 1 },
            ClientError::HandshakeMalformed { reason: "x".into() },
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
        let mut codes: Vec<u16> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            assert!(e.sqlstate().starts_with("08"), "{e:?}");
            assert_ne!(e.code(), 1105);
            assert!(
                !(2000..3000).contains(&e.code()),
                "{e:?} uses a client-range code"
            );
            let p = e.to_packet();
            assert_eq!(ErrPacket::parse(&p.encode()).unwrap(), p);
        }
    }
}
