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
