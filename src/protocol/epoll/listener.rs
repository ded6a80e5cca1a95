//! A listening socket shared by every worker's epoll set: each worker accepts on its own
//! thread, so a new session can start where it is accepted, without a hand-off and the
//! wake-up of a second thread.
//!
//! Registered with `EPOLLEXCLUSIVE` (Linux 4.5): a new connection wakes one waiting worker,
//! not all of them. Where the kernel refuses the flag, every idle worker wakes and all but one
//! find nothing to accept, which costs a wake-up and an `EAGAIN` each and loses nothing.

use super::reactor::{IoSlot, Reactor, READ};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::task::{Context, Poll};

pub struct EpollListener {
    slot: Arc<IoSlot>,
    reactor: Arc<Reactor>,
    listener: Arc<TcpListener>,
}

impl EpollListener {
    /// Adds the (nonblocking) `listener` to `reactor`'s epoll set; other reactors may hold it too.
    pub fn adopt(listener: Arc<TcpListener>, reactor: Arc<Reactor>) -> io::Result<EpollListener> {
        listener.set_nonblocking(true)?;
        let slot = reactor.register_listener(listener.as_raw_fd())?;
        Ok(EpollListener {
            slot,
            reactor,
            listener,
        })
    }

    /// The next connection, waiting for one when none is queued. A listener whose socket
    /// failed (reported as closed) is an error rather than a loop of empty accepts.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            std::task::ready!(self.slot.poll_ready(READ, cx));
            let seen = self.slot.snapshot();
            match accept_nonblocking(&self.listener) {
                Ok(pair) => return Poll::Ready(Ok(pair)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if IoSlot::closed(seen, READ) {
                        return Poll::Ready(Err(io::Error::other(
                            "the listening socket reported an error or hang-up",
                        )));
                    }
                    self.slot.clear(READ, seen);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `poll_accept` as a future.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
}

/// One `accept4` that makes the new socket nonblocking and close-on-exec in the same call
/// (the standard library's accept leaves it blocking, and making it nonblocking is another
/// system call per session).
fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let fd = listener.as_raw_fd();
    // SAFETY: `try_init` hands a zeroed address buffer and its length; `accept4` writes at most
    // that length and returns a new descriptor we own.
    let (socket, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let ret = libc::accept4(
                fd,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if ret < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(TcpStream::from_raw_fd(ret))
            }
        })
    }?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("an accepted connection has no IP address"))?;
    Ok((socket, peer))
}

impl Drop for EpollListener {
    fn drop(&mut self) {
        self.reactor
            .deregister(self.listener.as_raw_fd(), self.slot.clone());
    }
}
