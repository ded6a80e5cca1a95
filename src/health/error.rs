//! Why a health probe failed, with the I/O or protocol error that caused it kept as the source.
//! The text is the reason a backend is marked down with, shown by `/api/backends`.

use crate::protocol::handshake::HandshakeError;
use crate::protocol::response::ErrPacket;
use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("backend answered with an error: {0}")]
    Greeted(String),
    #[error("malformed greeting: {0}")]
    Malformed(#[source] HandshakeError),
    #[error("backend refused a login: {0}")]
    LoginRefused(ErrPacket),
    #[error("no greeting within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl ProbeError {
    /// The probe failed for want of a descriptor, buffer or memory in this process or host,
    /// before any packet reached the backend: it shows nothing about the backend.
    pub fn is_local_shortage(&self) -> bool {
        let io = match self {
            ProbeError::Io(e) => e,
            ProbeError::Status(StatusError::Io { source, .. }) => source,
            _ => return false,
        };
        matches!(
            io.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
}

/// A failed `GET /status` of a TiDB status port.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status port {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("status port {addr} did not answer HTTP")]
    NotHttp { addr: String },
    #[error("status port {addr} did not answer within {} ms", .limit.as_millis())]
    Timeout { addr: String, limit: Duration },
    #[error("status port {addr} answered {code}")]
    Answered { addr: String, code: u16 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shortage_in_this_process_says_nothing_about_the_backend() {
        let os = |code| ProbeError::Io(io::Error::from_raw_os_error(code));
        assert!(os(libc::EMFILE).is_local_shortage());
        assert!(os(libc::ENFILE).is_local_shortage());
        let status = ProbeError::Status(StatusError::Io {
            addr: "10.0.0.1:10080".into(),
            source: io::Error::from_raw_os_error(libc::EMFILE),
        });
        assert!(status.is_local_shortage());
        assert!(!os(libc::ECONNREFUSED).is_local_shortage());
        assert!(!os(libc::ETIMEDOUT).is_local_shortage());
        assert!(!ProbeError::Timeout(Duration::from_secs(1)).is_local_shortage());
    }
}
