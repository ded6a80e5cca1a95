//! The io_uring I/O engine: on a worker thread that started it, plain TCP sessions send and
//! receive through one ring per thread instead of one readiness wait and one syscall per read and
//! write. Everything a worker's sessions queue during one pass of its run queue goes to the
//! kernel in a single `io_uring_enter`, and the ring's own descriptor sits in the thread's epoll
//! set, so timers, TLS sessions and everything else keep running on tokio as before.
//!
//! Availability is checked once at start-up: `io_uring_setup` may be refused (seccomp, the
//! `kernel.io_uring_disabled` sysctl, an old kernel); the caller then logs one line and keeps
//! the epoll path.

mod driver;
mod socket;

pub use socket::UringStream;

use std::io;

/// Which I/O engine carries plain-TCP sessions on the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// The workers' own loop over their own epoll sets: a read or write syscall per hop.
    #[default]
    Epoll,
    /// A current-thread tokio runtime per worker, readiness from tokio's reactor (the engine
    /// before the workers had their own loop).
    Tokio,
    /// Sends and receives submitted in batches through a per-worker io_uring.
    IoUring,
}

impl IoEngine {
    pub fn parse(s: &str) -> Option<IoEngine> {
        match s {
            "" | "epoll" => Some(IoEngine::Epoll),
            "tokio" => Some(IoEngine::Tokio),
            "io-uring" | "io_uring" | "iouring" => Some(IoEngine::IoUring),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Epoll => "epoll",
            IoEngine::Tokio => "tokio",
            IoEngine::IoUring => "io-uring",
        }
    }
}

/// Whether this process may use io_uring here: builds a small ring with a provided-buffer
/// ring, which is everything the engine needs (kernel 5.19 or later).
pub fn probe() -> io::Result<()> {
    driver::Driver::new(8, 8).map(drop)
}

/// Starts the engine on the calling worker thread, inside its runtime: the returned future
/// drives the ring and must be spawned there (it never ends). Afterwards
/// [`UringStream::adopt`] moves this thread's plain sockets onto the ring.
pub fn start_on_this_thread() -> io::Result<impl std::future::Future<Output = ()> + Send> {
    driver::install()?;
    Ok(driver::run())
}

/// Whether the calling thread has a running engine.
pub fn active_here() -> bool {
    driver::installed()
}
