//! A TCP socket in this worker's own epoll set: readiness from the reactor, reads and writes
//! as single system calls that clear the readiness when they find the socket drained or full.

use super::reactor::{IoSlot, Reactor, READ, WRITE};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct EpollTcp {
    slot: Arc<IoSlot>,
    reactor: Arc<Reactor>,
    /// Closed right after `Drop::drop` has handed its slot back.
    tcp: std::net::TcpStream,
}

/// One `recvfrom` (through `syscall(2)`: libc's wrapper is a thread-cancellation point and
/// switches cancellation on and off around every call).
#[inline]
pub(crate) fn sys_recv(fd: i32, room: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: receives into `room`, at most its length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            room.as_mut_ptr(),
            room.len(),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// One `sendto`, as `sys_recv`; never raises SIGPIPE.
#[inline]
pub(crate) fn sys_send(fd: i32, data: &[u8]) -> io::Result<usize> {
    // SAFETY: sends from `data`, at most its length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            data.as_ptr(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Whether `tcp` is in nonblocking mode (for the debug check on adoption).
pub(crate) fn is_nonblocking(tcp: &std::net::TcpStream) -> bool {
    // SAFETY: F_GETFL on an open descriptor reads its flags and changes nothing.
    let flags = unsafe { libc::fcntl(tcp.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

impl EpollTcp {
    /// Puts `tcp`, already nonblocking, into `reactor`'s epoll set.
    pub fn adopt(tcp: std::net::TcpStream, reactor: Arc<Reactor>) -> io::Result<EpollTcp> {
        debug_assert!(
            is_nonblocking(&tcp),
            "a blocking socket would stall the worker"
        );
        let slot = reactor.register(tcp.as_raw_fd())?;
        Ok(EpollTcp { slot, reactor, tcp })
    }

    /// Connects to `addr` from this thread's reactor, without leaving it: the socket is made
    /// nonblocking, the connect completes when it turns writable.
    pub async fn connect(
        addr: std::net::SocketAddr,
        reactor: Arc<Reactor>,
    ) -> io::Result<EpollTcp> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        let pending = match socket.connect(&addr.into()) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        let tcp: std::net::TcpStream = socket.into();
        let slot = reactor.register_as(tcp.as_raw_fd(), if pending { 0 } else { WRITE })?;
        let conn = EpollTcp { slot, reactor, tcp };
        if pending {
            std::future::poll_fn(|cx| conn.poll_write_ready(cx)).await?;
            // Linux records a failed connect in SO_ERROR before it reports the socket
            // writable (or in error), so no error here means connected.
            if let Some(e) = conn.tcp.take_error()? {
                return Err(e);
            }
        }
        Ok(conn)
    }

    pub fn get_ref(&self) -> &std::net::TcpStream {
        &self.tcp
    }

    #[inline]
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.slot.poll_ready(READ, cx).map(|_| Ok(()))
    }

    /// True unless the last read found the socket drained and nothing was reported since.
    #[inline]
    pub fn read_ready(&self) -> bool {
        self.slot.is_ready(READ)
    }

    #[inline]
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.slot.poll_ready(WRITE, cx).map(|_| Ok(()))
    }

    /// One receive into `room`: `WouldBlock` when nothing was there. A receive that did not
    /// fill `room` drained the socket, so the readiness is cleared and the next read waits.
    #[inline]
    pub fn recv(&self, room: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        let seen = self.slot.snapshot();
        match sys_recv(self.tcp.as_raw_fd(), room) {
            Ok(n) => {
                if n > 0 && n < room.len() {
                    self.slot.clear(READ, seen);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.slot.clear(READ, seen);
                }
                Err(e)
            }
        }
    }

    /// One send of (a prefix of) `data`: `WouldBlock`, with the readiness cleared, when the
    /// socket's buffer is full.
    #[inline]
    pub fn send(&self, data: &[u8]) -> io::Result<usize> {
        let seen = self.slot.snapshot();
        let sent = sys_send(self.tcp.as_raw_fd(), data);
        if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.slot.clear(WRITE, seen);
        }
        sent
    }
}

impl Drop for EpollTcp {
    fn drop(&mut self) {
        // `tcp` is closed right after this, which ends its registration.
        self.reactor
            .release(self.tcp.as_raw_fd(), self.slot.clone());
    }
}

impl AsyncRead for EpollTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes the bytes it reports, which `assume_init` then covers.
            let room = unsafe { buf.unfilled_mut() };
            match self.recv(room) {
                Ok(n) => {
                    // SAFETY: the kernel initialised `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for EpollTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            match self.send(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.tcp.shutdown(std::net::Shutdown::Write))
    }
}
