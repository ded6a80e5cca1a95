//! Where a failure came from: the client's network or handshake, a backend's network or
//! handshake, or the proxy itself. The classification decides how loudly a session's end is
//! logged (with its `source` field), and whether a failed login dial moves on to the next
//! backend, so a client that hangs up is never reported like a backend that vanished and a
//! configuration fault is not retried on every backend in turn.

use super::backend_conn::DialError;
use super::error::ClientError;
use tracing::Level;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    ClientNetwork,
    ClientHandshake,
    BackendNetwork,
    BackendHandshake,
    Proxy,
}

impl ErrorSource {
    pub fn label(self) -> &'static str {
        match self {
            ErrorSource::ClientNetwork => "client_network",
            ErrorSource::ClientHandshake => "client_handshake",
            ErrorSource::BackendNetwork => "backend_network",
            ErrorSource::BackendHandshake => "backend_handshake",
            ErrorSource::Proxy => "proxy",
        }
    }

    /// Clients come and go and say so themselves; a backend or proxy failure is what an
    /// operator looks for.
    pub fn level(self) -> Level {
        match self {
            ErrorSource::ClientNetwork | ErrorSource::ClientHandshake => Level::DEBUG,
            ErrorSource::BackendNetwork | ErrorSource::BackendHandshake | ErrorSource::Proxy => {
                Level::INFO
            }
        }
    }

    /// Whether another attempt can succeed: a backend failure may pass or another backend
    /// may be picked; a refusal by the proxy's own rules or configuration stays until they
    /// change.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorSource::BackendNetwork | ErrorSource::BackendHandshake
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
            | ClientError::UnsupportedCommand { .. }
            | ClientError::ShuttingDown => ErrorSource::Proxy,
            ClientError::NoBackendAvailable { .. }
            | ClientError::BackendConnectFailed { .. }
            | ClientError::BackendLost { .. }
            | ClientError::TxnRolledBack { .. }
            | ClientError::OutcomeUnknown { .. }
            | ClientError::NotExecuted { .. }
            | ClientError::FailoverTimeout { .. }
            | ClientError::TidbStateLost { .. } => ErrorSource::BackendNetwork,
            ClientError::BackendMalformed { .. } => ErrorSource::BackendHandshake,
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
}
