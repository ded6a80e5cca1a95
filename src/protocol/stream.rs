//! A byte stream that is plain TCP or TLS on either side, upgraded in place after SSLRequest,
//! or an in-memory pipe (`tokio::io::duplex`) so the relay and the session logic can be
//! tested without sockets.

use super::tcp::Tcp;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

pub enum Stream {
    Plain(Tcp),
    Server(Box<server::TlsStream<Tcp>>),
    Client(Box<client::TlsStream<Tcp>>),
    /// One end of an in-memory pipe.
    Memory(Box<tokio::io::DuplexStream>),
    /// Plain TCP carried by the worker's io_uring (see [`super::uring`]).
    Uring(super::uring::UringStream),
    /// Only while an upgrade is in progress; any I/O on it fails.
    Upgrading,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Server(_) | Stream::Client(_))
    }

    /// TLS accept on a plain stream (the client sent SSLRequest).
    pub async fn upgrade_server(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Upgrading) else {
            return Err(io::Error::other("stream is already TLS"));
        };
        *self = Stream::Server(Box::new(acceptor.accept(tcp).await?));
        Ok(())
    }

    /// TLS connect on a plain stream (after sending SSLRequest to a backend).
    pub async fn upgrade_client(
        &mut self,
        connector: &TlsConnector,
        name: rustls_pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Upgrading) else {
            return Err(io::Error::other("stream is already TLS"));
        };
        *self = Stream::Client(Box::new(connector.connect(name, tcp).await?));
        Ok(())
    }

    /// Plain TCP on this thread's reactor (see [`Tcp::from_std`]).
    pub fn plain(tcp: impl Into<Tcp>) -> Stream {
        Stream::Plain(tcp.into())
    }

    /// Moves a plain TCP stream onto this worker's io_uring, if the worker runs one; TLS and
    /// other streams stay as they are. A socket the reactor would not release is lost, and
    /// the next I/O on it fails like a dropped connection.
    #[inline]
    pub fn adopt_uring(&mut self) {
        if matches!(self, Stream::Plain(Tcp::Tokio(_))) {
            self.adopt_uring_now();
        }
    }

    fn adopt_uring_now(&mut self) {
        if !super::uring::active_here() {
            return;
        }
        let Stream::Plain(Tcp::Tokio(tcp)) = std::mem::replace(self, Stream::Upgrading) else {
            return;
        };
        match super::uring::UringStream::adopt(tcp) {
            Ok(u) => *self = Stream::Uring(u),
            Err(Some(tcp)) => *self = Stream::Plain(Tcp::Tokio(tcp)),
            Err(None) => {}
        }
    }

    /// For streams that can wait for bytes without a read buffer (plain TCP, on either
    /// engine): readiness to read. `None` for the others.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        match self {
            Stream::Plain(tcp) => Some(tcp.poll_read_ready(cx)),
            Stream::Uring(u) => Some(u.poll_read_ready(cx)),
            _ => None,
        }
    }
}

fn upgrading() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream is being upgraded")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Uring(s) => Pin::new(s).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Uring(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// Two packet-level ends of an in-memory pipe of `capacity` bytes each way.
pub fn memory_pair(capacity: usize) -> (Stream, Stream) {
    let (a, b) = tokio::io::duplex(capacity);
    (Stream::Memory(Box::new(a)), Stream::Memory(Box::new(b)))
}

/// Shared TLS settings for each side, built once from the config.
#[derive(Clone, Default)]
pub struct TlsContext {
    pub server: Option<TlsAcceptor>,
    pub client: Option<TlsConnector>,
    /// `[security.server-tls] ca` is set (without skip-ca): a client must come over TLS with
    /// a certificate that CA signed, so a plaintext login is refused too.
    pub require_client_cert: bool,
}

impl TlsContext {
    pub fn new(
        server: Option<Arc<rustls::ServerConfig>>,
        client: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            server: server.map(TlsAcceptor::from),
            client: client.map(TlsConnector::from),
            require_client_cert: false,
        }
    }
}
