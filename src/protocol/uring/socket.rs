//! A TCP socket carried by its worker's ring. Writes are queued and return at once, as a write
//! into a socket buffer does (the kernel gets them with the worker's next batch); a send error
//! is reported by the next write or flush. Reads copy out of the ring's receive buffers.
//! The stream is tied to the thread whose ring it is on; used anywhere else it only fails.

use super::driver;
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct UringStream {
    driver: u64,
    slot: u32,
}

fn off_thread() -> io::Error {
    io::Error::other("io_uring socket used off its worker thread")
}

impl UringStream {
    /// Moves `tcp` onto this thread's ring. `Err(Some(tcp))`: the thread has no ring, nothing
    /// changed. `Err(None)`: the reactor refused to let the socket go (it is closed).
    pub fn adopt(tcp: TcpStream) -> Result<UringStream, Option<TcpStream>> {
        if driver::current_id().is_none() {
            return Err(Some(tcp));
        }
        let fd: RawFd = tcp.into_std().map_err(|_| None)?.into_raw_fd();
        let (driver, slot) = driver::register(fd).ok_or(None)?;
        Ok(UringStream { driver, slot })
    }

    /// Waits until bytes (or the end of the stream) can be read, holding no buffer meanwhile.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        driver::with(self.driver, |d| d.poll_read_ready(self.slot, cx))
            .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }

    /// The socket's descriptor, for socket options and addresses.
    pub fn raw_fd(&self) -> Option<RawFd> {
        driver::with(self.driver, |d| d.fd(self.slot))
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let slot = self.slot;
        // Without the driver (its thread is ending) the ring closes, and its sockets with it.
        let _ = driver::with(self.driver, |d| d.release(slot));
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let slot = self.slot;
        driver::with(self.driver, |d| d.poll_read(slot, cx, buf))
            .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let slot = self.slot;
        driver::with(self.driver, |d| d.poll_write(slot, cx, data))
            .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let slot = self.slot;
        driver::with(self.driver, |d| d.poll_flush(slot, cx))
            .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let slot = self.slot;
        driver::with(self.driver, |d| {
            d.poll_flush(slot, cx).map_ok(|()| {
                // SAFETY: the descriptor is open while the slot is held.
                unsafe { libc::shutdown(d.fd(slot), libc::SHUT_WR) };
            })
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }
}
