//! MySQL wire format only: framing, capabilities, handshake and auth packets, OK/ERR/EOF,
//! compression and the TLS-capable stream. Knows nothing of config, metrics or backends.

pub mod buf;
pub mod compress;
pub mod conn;
pub mod constants;
pub mod epoll;
pub mod handshake;
pub mod proxy_protocol;
pub mod response;
pub mod spare;
pub mod stream;
pub mod tcp;
pub mod uring;

pub use conn::PacketConn;
pub use stream::Stream;
pub use tcp::Tcp;
