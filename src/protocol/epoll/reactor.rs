//! One edge-triggered epoll set per worker thread, the readiness it reports for each socket,
//! and the eventfd that wakes the thread when another one hands it work.
//!
//! Readiness is kept per socket in one word: a read bit, a write bit, two sticky bits for a
//! peer that closed (or a broken socket) and a tick that each reported event advances. A
//! reader that found the socket drained clears its bit only if no event came since it looked
//! (same tick), so an edge can never be lost between the system call and the clear, even when
//! the socket is polled from another thread. The sticky bits are never cleared: with
//! edge-triggered events, a close reported while data was still queued is reported once, and
//! the read that drains the data must not make the end of the stream wait forever.

use atomic_waker::AtomicWaker;
use std::cell::OnceCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

pub(super) const READ: usize = 1;
pub(super) const WRITE: usize = 2;
const READ_CLOSED: usize = 4;
const WRITE_CLOSED: usize = 8;
const FLAGS: usize = READ | WRITE | READ_CLOSED | WRITE_CLOSED;
const TICK: usize = 16;

/// Events taken from the kernel per wait.
const EVENTS: usize = 256;

/// The readiness of one registered socket, and who waits on it.
pub(super) struct IoSlot {
    ready: AtomicUsize,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl IoSlot {
    fn new(ready: usize) -> Arc<IoSlot> {
        Arc::new(IoSlot {
            ready: AtomicUsize::new(ready),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        })
    }

    /// The readiness word when `dir` is ready, after registering `cx` to be woken when it
    /// becomes so.
    #[inline]
    pub(super) fn poll_ready(&self, dir: usize, cx: &mut Context<'_>) -> Poll<usize> {
        // `dir` or its sticky closed bit (twice `dir`).
        let mask = dir | dir << 2;
        let now = self.ready.load(Ordering::Acquire);
        if now & mask != 0 {
            return Poll::Ready(now);
        }
        let waiters = if dir == READ {
            &self.reader
        } else {
            &self.writer
        };
        waiters.register(cx.waker());
        // An event reported on another thread between the load and the registration.
        let now = self.ready.load(Ordering::Acquire);
        if now & mask != 0 {
            Poll::Ready(now)
        } else {
            Poll::Pending
        }
    }

    /// True when the readiness word `seen` carries `dir`'s sticky closed bit.
    #[inline]
    pub(super) fn closed(seen: usize, dir: usize) -> bool {
        seen & dir << 2 != 0
    }

    /// True when `dir`, or its sticky closed bit, is set: an attempt may succeed.
    #[inline]
    pub(super) fn is_ready(&self, dir: usize) -> bool {
        self.ready.load(Ordering::Acquire) & (dir | dir << 2) != 0
    }

    #[inline]
    pub(super) fn snapshot(&self) -> usize {
        self.ready.load(Ordering::Acquire)
    }

    /// Clears `dir`, unless an event came after `seen` was read.
    #[inline]
    pub(super) fn clear(&self, dir: usize, seen: usize) {
        let mut cur = seen;
        while cur & !FLAGS == seen & !FLAGS {
            match self.ready.compare_exchange_weak(
                cur,
                cur & !dir,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    fn report(&self, bits: usize) {
        let mut cur = self.ready.load(Ordering::Acquire);
        loop {
            let next = (cur | bits).wrapping_add(TICK);
            match self
                .ready
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if bits & (READ | READ_CLOSED) != 0 {
            self.reader.wake();
        }
        if bits & (WRITE | WRITE_CLOSED) != 0 {
            self.writer.wake();
        }
    }
}

/// A worker thread's epoll set.
pub struct Reactor {
    epoll: OwnedFd,
    /// Written by other threads to end a wait; always registered, level-triggered.
    wake: OwnedFd,
    /// The worker is in (or about to enter) a wait that only an event or `notify` ends.
    sleeping: AtomicBool,
    /// Slots of sockets closed since the last wait: an event taken in the same batch as the
    /// close may still name one, so they are freed only right before the next wait.
    closed: Mutex<Vec<Arc<IoSlot>>>,
    has_closed: AtomicBool,
}

thread_local! {
    static CURRENT: OnceCell<Arc<Reactor>> = const { OnceCell::new() };
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Reactor {
    /// Creates this thread's reactor; sockets adopted on this thread afterwards register here.
    pub fn install() -> io::Result<Arc<Reactor>> {
        // SAFETY: plain system calls; the descriptors are owned from here on.
        let epoll =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe {
            OwnedFd::from_raw_fd(check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        check(unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                wake.as_raw_fd(),
                &mut ev,
            )
        })?;
        let reactor = Arc::new(Reactor {
            epoll,
            wake,
            sleeping: AtomicBool::new(false),
            closed: Mutex::new(Vec::new()),
            has_closed: AtomicBool::new(false),
        });
        CURRENT
            .with(|c| c.set(reactor.clone()))
            .map_err(|_| io::Error::other("this thread already has a reactor"))?;
        Ok(reactor)
    }

    /// This thread's reactor, if it runs one.
    #[inline]
    pub fn current() -> Option<Arc<Reactor>> {
        CURRENT.with(|c| c.get().cloned())
    }

    /// Whether this thread runs a reactor.
    #[inline]
    pub fn active_here() -> bool {
        CURRENT.with(|c| c.get().is_some())
    }

    /// Adds `fd` (edge-triggered, both ways) and returns its slot. The socket starts writable:
    /// a first send that finds it full costs one `EAGAIN`, a first wait for the
    /// connection's first bytes costs nothing.
    pub(super) fn register(&self, fd: RawFd) -> io::Result<Arc<IoSlot>> {
        self.register_as(fd, WRITE)
    }

    /// `register` with the readiness the socket starts with: none for a connect in progress,
    /// which is writable once it is done.
    pub(super) fn register_as(&self, fd: RawFd, ready: usize) -> io::Result<Arc<IoSlot>> {
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        let slot = IoSlot::new(ready);
        self.add(fd, events, &slot)?;
        Ok(slot)
    }

    /// Adds a listening socket that other workers' sets may hold too: edge-triggered reads,
    /// one waiting worker woken per connection where the kernel knows `EPOLLEXCLUSIVE`.
    /// It starts readable, so connections queued before it was added are accepted.
    pub(super) fn register_listener(&self, fd: RawFd) -> io::Result<Arc<IoSlot>> {
        let slot = IoSlot::new(READ);
        let events = libc::EPOLLIN | libc::EPOLLET;
        match self.add(fd, events | libc::EPOLLEXCLUSIVE, &slot) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.add(fd, events, &slot)?,
            r => r?,
        }
        Ok(slot)
    }

    fn add(&self, fd: RawFd, events: libc::c_int, slot: &Arc<IoSlot>) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: Arc::as_ptr(slot) as u64,
        };
        // SAFETY: `fd` is open; `ev` outlives the call.
        check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)
        })?;
        Ok(())
    }

    /// For a socket about to be closed: on this reactor's own thread the close itself takes
    /// `fd` out of the set (its descriptor is never duplicated), so only the slot is kept
    /// until no event taken can name it. From another thread a wait may run between here and
    /// the close, so the socket is removed first, as `deregister` does.
    pub(super) fn release(&self, fd: RawFd, slot: Arc<IoSlot>) {
        let here = CURRENT.with(|c| c.get().is_some_and(|r| std::ptr::eq(&**r, self)));
        if here {
            self.keep_until_next_wait(slot);
        } else {
            self.deregister(fd, slot);
        }
    }

    /// Removes `fd` (still open) and keeps its slot until no event taken can name it.
    pub(super) fn deregister(&self, fd: RawFd, slot: Arc<IoSlot>) {
        // SAFETY: `fd` is open; a null event is allowed for DEL since Linux 2.6.9.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        self.keep_until_next_wait(slot);
    }

    fn keep_until_next_wait(&self, slot: Arc<IoSlot>) {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        self.has_closed.store(true, Ordering::Release);
    }

    /// Ends a wait of the worker from another thread (a no-op when it is not waiting). Only
    /// the first of several notifiers during one wait writes the eventfd.
    pub fn notify(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from `one` to the eventfd; a full counter (EAGAIN) still
            // leaves it readable, which is all a wake needs.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Marks the worker as about to wait: from here, `notify` writes the eventfd. The caller
    /// checks its queue of handed-over work after this and before `wait`.
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Waits for events (up to `timeout_ms`, -1 for as long as it takes) and reports them to
    /// their sockets, waking whoever waits on each. Returns how many sockets had events.
    pub fn wait(&self, timeout_ms: i32, events: &mut Events) -> io::Result<usize> {
        if self.has_closed.swap(false, Ordering::AcqRel) {
            // Dropped outside the lock: freeing a slot drops the wakers it still holds.
            let gone = std::mem::take(&mut *self.closed.lock().unwrap_or_else(|e| e.into_inner()));
            drop(gone);
        }
        // Through `syscall(2)`: libc's `epoll_wait` is a thread-cancellation point and pays
        // for switching cancellation on and off around the call. `epoll_pwait` with no mask
        // is `epoll_wait`, and exists on every architecture.
        // SAFETY: the buffer holds EVENTS entries and outlives the call.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait,
                self.epoll.as_raw_fd(),
                events.0.as_mut_ptr(),
                EVENTS as libc::c_int,
                timeout_ms,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        } as libc::c_int;
        self.sleeping.store(false, Ordering::SeqCst);
        let n = match check(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        let mut sockets = 0;
        for ev in &events.0[..n] {
            let (flags, data) = (ev.events, ev.u64);
            if data == 0 {
                let mut count = 0u64;
                // SAFETY: reads 8 bytes into `count` from the nonblocking eventfd.
                unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
                continue;
            }
            sockets += 1;
            let mut bits = 0;
            if flags & libc::EPOLLIN as u32 != 0 {
                bits |= READ;
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                bits |= WRITE;
            }
            if flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                bits |= READ_CLOSED;
            }
            if flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                bits |= WRITE_CLOSED;
            }
            // SAFETY: `data` is the address of a slot registered here. A released or
            // deregistered slot stays in `closed` until the next wait, so it is alive for this
            // whole batch.
            let slot = unsafe { &*(data as *const IoSlot) };
            slot.report(bits);
        }
        Ok(sockets)
    }
}

/// The buffer `Reactor::wait` fills.
pub struct Events(Box<[libc::epoll_event]>);

impl Default for Events {
    fn default() -> Self {
        Events(vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS].into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::Reactor;
    use crate::protocol::epoll::EpollTcp;
    use std::os::fd::AsRawFd;

    /// The descriptors in `reactor`'s epoll set, as the kernel lists them.
    fn registered(reactor: &Reactor) -> Vec<i32> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", reactor.epoll.as_raw_fd()))
                .unwrap();
        info.lines()
            .filter_map(|l| l.strip_prefix("tfd:"))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_dropped_socket_leaves_the_set_on_its_own_thread_and_from_another() {
        let reactor = Reactor::install().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let adopt = || {
            let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            tcp.set_nonblocking(true).unwrap();
            EpollTcp::adopt(tcp, reactor.clone()).unwrap()
        };
        let (here, there) = (adopt(), adopt());
        let fds = [here.get_ref().as_raw_fd(), there.get_ref().as_raw_fd()];
        assert!(fds.iter().all(|fd| registered(&reactor).contains(fd)));
        // On its reactor's thread the close alone takes it out.
        drop(here);
        // From another thread it is taken out before its slot is queued for freeing.
        std::thread::spawn(move || drop(there)).join().unwrap();
        let left = registered(&reactor);
        assert!(
            fds.iter().all(|fd| !left.contains(fd)),
            "still registered: {left:?} of {fds:?}"
        );
        // Both slots wait for the next wait to be freed.
        assert_eq!(reactor.closed.lock().unwrap().len(), 2);
    }
}
