//! Where a failure came from: the client's network, handshake or credentials, a backend's
//! network or handshake, no backend to be had, a packet out of place, or the proxy itself.
//! The classification decides how loudly a session's end is logged (with its `source`
//! field), the `server_disconnection_total` series it counts in, and whether a failed login
//! dial moves on to the next backend, so a client that hangs up is never reported like a
//! backend that vanished and a configuration fault is not retried on every backend in turn.

use super::backend_conn::DialError;
use super::error::ClientError;
use crate::metrics::Disconnect;
use tracing::Level;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    ClientNetwork,
    ClientHandshake,
    /// The backend refused the client's credentials.
    ClientAuth,
    BackendNetwork,
    BackendHandshake,
    /// No healthy backend would take the session.
    NoBackend,
    /// A backend answered out of protocol order.
    Malformed,
    Proxy,
    /// The proxy is shutting down.
    ProxyShutdown,
}

impl ErrorSource {
    pub fn label(self) -> &'static str {
        match self {
            ErrorSource::ClientNetwork => "client_network",
            ErrorSource::ClientHandshake => "client_handshake",
            ErrorSource::ClientAuth => "client_auth",
            ErrorSource::BackendNetwork => "backend_network",
            ErrorSource::BackendHandshake => "backend_handshake",
            ErrorSource::NoBackend => "no_backend",
            ErrorSource::Malformed => "malformed",
            ErrorSource::Proxy => "proxy",
            ErrorSource::ProxyShutdown => "proxy_shutdown",
        }
    }

    /// The `server_disconnection_total` series of a session this failure ended.
    pub fn disconnect(self) -> Disconnect {
        match self {
            ErrorSource::ClientNetwork => Disconnect::ClientNetwork,
            ErrorSource::ClientHandshake => Disconnect::ClientHandshake,
            ErrorSource::ClientAuth => Disconnect::AuthFail,
            ErrorSource::BackendNetwork => Disconnect::BackendNetwork,
            ErrorSource::BackendHandshake => Disconnect::BackendHandshake,
            ErrorSource::NoBackend => Disconnect::NoBackend,
            ErrorSource::Malformed => Disconnect::Malformed,
            ErrorSource::Proxy => Disconnect::ProxyError,
            ErrorSource::ProxyShutdown => Disconnect::ProxyShutdown,
        }
    }

    /// Clients come and go and say so themselves; a backend or proxy failure is what an
    /// operator looks for.
    pub fn level(self) -> Level {
        match self {
            ErrorSource::ClientNetwork | ErrorSource::ClientHandshake | ErrorSource::ClientAuth => {
                Level::DEBUG
            }
            ErrorSource::BackendNetwork
            | ErrorSource::BackendHandshake
            | ErrorSource::NoBackend
            | ErrorSource::Malformed
            | ErrorSource::Proxy
            | ErrorSource::ProxyShutdown => Level::INFO,
        }
    }

    /// Whether another attempt can succeed: a backend failure may pass or another backend
    /// may be picked (or become healthy); a refusal by the proxy's own rules or configuration
    /// stays until they change.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorSource::BackendNetwork | ErrorSource::BackendHandshake | ErrorSource::NoBackend
        )
    }
}

impl ClientError {
    pub fn origin(&self) -> ErrorSource {
        match self {
            ClientError::HandshakeMalformed { .. }
            | ClientError::HandshakeTimeout { .. }
            | ClientError::ClientTlsRequired => ErrorSource::ClientHandshake,
            ClientError::TooManyConnections { .. }
            | ClientError::TooManyHandshakes { .. }
            | ClientError::UnsupportedCommand { .. } => ErrorSource::Proxy,
            ClientError::ShuttingDown => ErrorSource::ProxyShutdown,
            ClientError::NoBackendAvailable { .. } => ErrorSource::NoBackend,
            ClientError::BackendConnectFailed { .. }
            | ClientError::BackendLost { .. }
            | ClientError::TxnRolledBack { .. }
            | ClientError::OutcomeUnknown { .. }
            | ClientError::NotExecuted { .. }
            | ClientError::FailoverTimeout { .. }
            | ClientError::TidbStateLost { .. } => ErrorSource::BackendNetwork,
            ClientError::BackendMalformed { .. } => ErrorSource::Malformed,
            // The proxy's own TLS settings and the backend disagree; another try cannot help.
            ClientError::BackendTlsUnavailable { .. } => ErrorSource::Proxy,
        }
    }
}

impl DialError {
    pub fn origin(&self) -> ErrorSource {
        match self {
            DialError::Connect(_) => ErrorSource::BackendNetwork,
            DialError::Refused(_) | DialError::Malformed(_) => ErrorSource::BackendHandshake,
            // Certificates checked against the proxy's CA, or TLS the proxy requires and the
            // backend lacks: set by configuration on one side or the other, so no other
            // backend is tried and the client is told which.
            DialError::Tls(_) | DialError::TlsHandshake(_) => ErrorSource::Proxy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::ErrPacket;

    #[test]
    fn client_failures_are_quiet_and_backend_failures_are_not() {
        assert_eq!(
            ClientError::HandshakeTimeout { secs: 1 }.origin(),
            ErrorSource::ClientHandshake
        );
        let lost = ClientError::BackendLost {
            backend: "b:1".into(),
            detail: "reset".into(),
        };
        assert_eq!(lost.origin(), ErrorSource::BackendNetwork);
        assert_eq!(ErrorSource::ClientNetwork.level(), Level::DEBUG);
        assert_eq!(lost.origin().level(), Level::INFO);
    }

    #[test]
    fn dial_errors_keep_their_cause_and_classify() {
        let e = DialError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.origin(), ErrorSource::BackendNetwork);
        assert!(e.origin().retryable());
        let refused = DialError::Refused(ErrPacket::new(1040, "08004", "Too many connections"));
        assert_eq!(refused.origin(), ErrorSource::BackendHandshake);
        let config = DialError::Tls("no ca".into());
        assert!(!config.origin().retryable());
        let cert = DialError::TlsHandshake(std::io::Error::other("unknown issuer"));
        assert_eq!(cert.origin(), ErrorSource::Proxy, "not retried elsewhere");
    }

    /// `server_disconnection_total{type}` follows the classification, in TiProxy's values.
    #[test]
    fn a_session_end_counts_where_its_failure_came_from() {
        use crate::proxy::error::Next;
        use crate::proxy::session::End;
        let label = |end: End| end.disconnect().label();
        assert_eq!(label(End::ClientQuit), "success");
        assert_eq!(label(End::Shutdown), "proxy shutdown");
        assert_eq!(
            label(End::ClientGone("reset".into())),
            "client network break"
        );
        assert_eq!(
            label(End::ClientStalled("timed out".into())),
            "client network break"
        );
        assert_eq!(label(End::AuthDenied), "auth fail");
        let told = |e: ClientError| label(End::Told(e));
        assert_eq!(
            told(ClientError::HandshakeTimeout { secs: 10 }),
            "client handshake fail"
        );
        assert_eq!(
            told(ClientError::NoBackendAvailable {
                detail: "none healthy".into()
            }),
            "get backend fail"
        );
        let rolled_back = ClientError::TxnRolledBack {
            backend: "b:1".into(),
            detail: "reset".into(),
            next: Next::Closed("no other healthy backend".into()),
        };
        assert_eq!(told(rolled_back), "backend network break");
        assert_eq!(
            told(ClientError::BackendMalformed {
                backend: "b:1".into(),
                detail: "sequence".into()
            }),
            "malformed packet"
        );
        assert_eq!(told(ClientError::ShuttingDown), "proxy shutdown");
        assert_eq!(
            told(ClientError::UnsupportedCommand {
                command: "COM_BINLOG_DUMP"
            }),
            "proxy error"
        );
        assert_eq!(
            told(ClientError::BackendTlsUnavailable {
                backend: "b:1".into(),
                detail: "no TLS".into()
            }),
            "proxy error"
        );
        // A dial that failed in the backend's handshake counts as TiProxy counts it.
        let refused = DialError::Refused(ErrPacket::new(1040, "08004", "Too many connections"));
        assert_eq!(
            refused.origin().disconnect().label(),
            "backend handshake fail"
        );
    }
}
