//! A TCP socket on whichever reactor polls it: this worker's own epoll set when the thread
//! runs one (see [`super::epoll`]), tokio's otherwise (the control runtime, tests, and workers
//! on the tokio or io-uring engines).

use super::epoll::{sys_recv, sys_send, EpollTcp, Reactor};
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one receive or one send moves. Relaying large results through 32 KiB system calls
/// cost the proxy about an eighth more CPU per query than through 16 KiB ones, measured side by
/// side (docs/performance.md, step 10), so a full 32 KiB buffer is filled and sent in two.
const IO_PIECE: usize = 16 * 1024;

pub enum Tcp {
    Tokio(tokio::net::TcpStream),
    Epoll(EpollTcp),
}

impl From<tokio::net::TcpStream> for Tcp {
    fn from(tcp: tokio::net::TcpStream) -> Tcp {
        Tcp::Tokio(tcp)
    }
}

impl Tcp {
    /// A nonblocking socket handed over from another thread, registered with this thread's
    /// reactor. Every acceptor and `into_std` here give nonblocking sockets, so this makes no
    /// system call to set the mode.
    pub fn from_std(tcp: std::net::TcpStream) -> io::Result<Tcp> {
        match Reactor::current() {
            Some(reactor) => EpollTcp::adopt(tcp, reactor).map(Tcp::Epoll),
            None => {
                debug_assert!(
                    crate::protocol::epoll::is_nonblocking(&tcp),
                    "tokio needs a nonblocking socket"
                );
                tokio::net::TcpStream::from_std(tcp).map(Tcp::Tokio)
            }
        }
    }

    /// `tcp` (made with tokio's API, e.g. `connect`), moved to this thread's own reactor
    /// when it runs one.
    pub fn here(tcp: tokio::net::TcpStream) -> io::Result<Tcp> {
        if !Reactor::active_here() {
            return Ok(Tcp::Tokio(tcp));
        }
        Tcp::from_std(tcp.into_std()?)
    }

    /// Connects to `addr` (a name to look up, or an address): from this thread's own reactor
    /// when it runs one and `addr` needs no lookup, through tokio otherwise.
    pub async fn connect(addr: &str) -> io::Result<Tcp> {
        if let (Some(reactor), Ok(sa)) = (Reactor::current(), addr.parse::<SocketAddr>()) {
            return EpollTcp::connect(sa, reactor).await.map(Tcp::Epoll);
        }
        Tcp::here(tokio::net::TcpStream::connect(addr).await?)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Tcp::Tokio(t) => t.set_nodelay(on),
            Tcp::Epoll(t) => t.get_ref().set_nodelay(on),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Tcp::Tokio(t) => t.local_addr(),
            Tcp::Epoll(t) => t.get_ref().local_addr(),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Tcp::Tokio(t) => t.peer_addr(),
            Tcp::Epoll(t) => t.get_ref().peer_addr(),
        }
    }

    #[inline]
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Tcp::Tokio(t) => t.poll_read_ready(cx),
            Tcp::Epoll(t) => t.poll_read_ready(cx),
        }
    }

    /// False when a read would surely find nothing: on the worker's reactor, the readiness
    /// says the socket is drained. Tokio's sockets check their own readiness in `recv_into`.
    #[inline]
    pub fn may_read(&self) -> bool {
        match self {
            Tcp::Epoll(t) => t.read_ready(),
            Tcp::Tokio(_) => true,
        }
    }

    /// One receive into `rbuf`'s spare capacity (at most `IO_PIECE` of it), after readiness
    /// said there is something: the count (0 = the peer closed), or `WouldBlock` when nothing
    /// was there after all. A receive that does not fill the room clears the readiness, as
    /// tokio's own reads do, so a read rarely ends in `EAGAIN`.
    #[inline]
    pub fn recv_into(&self, rbuf: &mut BytesMut) -> io::Result<usize> {
        let got = match self {
            Tcp::Epoll(t) => {
                let room = rbuf.spare_capacity_mut();
                let piece = room.len().min(IO_PIECE);
                t.recv(&mut room[..piece])?
            }
            Tcp::Tokio(t) => {
                let mut got = 0usize;
                let room = rbuf.spare_capacity_mut();
                let piece = room.len().min(IO_PIECE);
                let room = &mut room[..piece];
                let read = t.try_io(tokio::io::Interest::READABLE, || {
                    let want = room.len();
                    got = sys_recv(t.as_raw_fd(), room)?;
                    if got > 0 && got < want {
                        // Short: the socket is drained; saying so clears the readiness.
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(())
                });
                match read {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
                    Err(e) => return Err(e),
                }
                got
            }
        };
        // SAFETY: the kernel initialised `got` bytes of the spare capacity.
        unsafe { rbuf.set_len(rbuf.len() + got) };
        Ok(got)
    }

    /// Writes all of `data`: straight to the socket while it takes bytes (no write future),
    /// waiting for writability only when it is full.
    pub async fn send_all(&self, mut data: &[u8]) -> io::Result<()> {
        loop {
            data = &data[self.send_now(data)?..];
            if data.is_empty() {
                return Ok(());
            }
            match self {
                Tcp::Epoll(t) => std::future::poll_fn(|cx| t.poll_write_ready(cx)).await?,
                Tcp::Tokio(t) => t.writable().await?,
            }
        }
    }

    /// Sends as much of `data` as the socket takes now, without waiting, in sends of at most
    /// `IO_PIECE`: the bytes sent, fewer than `data.len()` only when the socket's buffer is full.
    #[inline]
    pub fn send_now(&self, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..data.len().min(done + IO_PIECE)];
            let sent = match self {
                Tcp::Epoll(t) => t.send(rest),
                Tcp::Tokio(t) => t.try_io(tokio::io::Interest::WRITABLE, || {
                    sys_send(t.as_raw_fd(), rest)
                }),
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tcp::Tokio(t) => Pin::new(t).poll_read(cx, buf),
            Tcp::Epoll(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Tcp::Tokio(t) => Pin::new(t).poll_write(cx, buf),
            Tcp::Epoll(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tcp::Tokio(t) => Pin::new(t).poll_flush(cx),
            Tcp::Epoll(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tcp::Tokio(t) => Pin::new(t).poll_shutdown(cx),
            Tcp::Epoll(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}
