//! One ring per worker thread and the sockets on it. The driver owns every buffer the kernel
//! may touch: received bytes land in a provided-buffer ring (so a socket waiting for data holds
//! no buffer of its own, as on the epoll path), and bytes being sent sit in the socket's slot
//! until their completion arrives, however the session that wrote them fares meanwhile. A slot
//! and its descriptor are released only when no operation on it is left in the kernel.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use tokio::io::unix::AsyncFd;
use tokio::io::ReadBuf;

const RING_ENTRIES: u32 = 256;
/// Receive buffers per worker (a power of two); a socket holds one only from the moment data
/// arrives until the session has copied it out.
const BUF_COUNT: u16 = 256;
const BUF_SIZE: usize = 16 * 1024;
const BUF_GROUP: u16 = 1;
/// Bytes a socket may have queued for sending before a write waits, as a socket buffer would.
const WRITE_CAP: usize = 256 * 1024;
/// Send buffers kept for reuse once their socket has nothing left to send.
const SPARE_MAX: usize = 64;

const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static DRIVER: RefCell<Option<Box<Driver>>> = const { RefCell::new(None) };
}

#[derive(Default)]
struct Slot {
    fd: RawFd,
    recv_armed: bool,
    /// A received buffer not yet copied out: buffer id, length, bytes already taken.
    inbox: Option<(u16, usize, usize)>,
    eof: bool,
    read_err: i32,
    read_waker: Option<Waker>,
    /// Written by the session, not yet handed to the kernel.
    out: Vec<u8>,
    /// Handed to the kernel; untouched until its completion.
    in_flight: Vec<u8>,
    sent: usize,
    sending: bool,
    write_err: i32,
    write_waker: Option<Waker>,
    /// The stream was dropped: the slot goes once nothing is in flight.
    dropped: bool,
    cancelling: bool,
    /// Waiting for a receive buffer to come back (the kernel answered ENOBUFS).
    starved: bool,
}

/// The provided-buffer ring: entries the kernel takes buffers from, and the buffers.
struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_layout: std::alloc::Layout,
    memory: *mut u8,
    memory_layout: std::alloc::Layout,
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let entries_layout = std::alloc::Layout::from_size_align(
            usize::from(BUF_COUNT) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let memory_layout =
            std::alloc::Layout::from_size_align(usize::from(BUF_COUNT) * BUF_SIZE, 4096)
                .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let entries: *mut types::BufRingEntry =
            unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast();
        let memory = unsafe { std::alloc::alloc(memory_layout) };
        if entries.is_null() || memory.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "receive buffers",
            ));
        }
        let mut ring = BufRing {
            entries,
            entries_layout,
            memory,
            memory_layout,
            tail: 0,
        };
        for bid in 0..BUF_COUNT {
            ring.put(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn buffer(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < BUF_COUNT, so the offset stays inside `memory`.
        unsafe { self.memory.add(usize::from(bid) * BUF_SIZE) }
    }

    /// Puts a buffer back at the tail (visible to the kernel after `publish`).
    fn put(&mut self, bid: u16) {
        let at = usize::from(self.tail & (BUF_COUNT - 1));
        // SAFETY: `at` < BUF_COUNT; the kernel reads entries only between head and tail, and
        // this one is past the published tail.
        let entry = unsafe { &mut *self.entries.add(at) };
        entry.set_addr(self.buffer(bid) as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry, which stays allocated; the kernel
        // reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub(super) struct Driver {
    /// Deregistered before `ring` closes its descriptor (fields drop in order).
    readiness: Option<AsyncFd<RingFd>>,
    pub(super) id: u64,
    ring: IoUring,
    bufs: BufRing,
    slots: Vec<Slot>,
    free: Vec<u32>,
    starved: Vec<u32>,
    spare: Vec<Vec<u8>>,
    /// The task that submits and reaps; woken when a socket queues an operation.
    task: Option<Waker>,
    wake_list: Vec<Waker>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The kernel may still write into receive buffers while the ring winds down, and that
        // happens only when a worker thread ends: the buffer memory is left allocated.
        self.bufs.memory = std::ptr::null_mut();
        let _ = (self.bufs.memory_layout, self.bufs.entries_layout);
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Driver {
    pub(super) fn new(entries: u32, _bufs: u16) -> io::Result<Driver> {
        // Not DEFER_TASKRUN: deferred completions do not make the ring's descriptor readable
        // for epoll, so a worker parked in epoll_wait would never see them (tried: sessions hang).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)?;
        let bufs = BufRing::new()?;
        // SAFETY: the entries stay allocated for the ring's whole life (never freed, see Drop).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                BUF_COUNT,
                BUF_GROUP,
                0,
            )?;
        }
        Ok(Driver {
            readiness: None,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ring,
            bufs,
            slots: Vec::new(),
            free: Vec::new(),
            starved: Vec::new(),
            spare: Vec::new(),
            task: None,
            wake_list: Vec::new(),
        })
    }

    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: every buffer an entry points at is owned by this driver (receive buffers) or
        // by the slot (sends), and neither is freed while the operation is in flight.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) {
                    // The queue is full and the kernel busy: reap first, then retry.
                    self.reap();
                }
            }
        }
        if let Some(task) = &self.task {
            task.wake_by_ref();
        }
    }

    fn arm_recv(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.recv_armed || s.dropped || s.inbox.is_some() || s.eof || s.read_err != 0 {
            return;
        }
        s.recv_armed = true;
        let sqe = opcode::Recv::new(types::Fd(s.fd), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(BUF_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(u64::from(slot) << 8 | OP_RECV);
        self.push(sqe);
    }

    fn start_send(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let (ptr, len) = (s.in_flight[s.sent..].as_ptr(), s.in_flight.len() - s.sent);
        s.sending = true;
        let sqe = opcode::Send::new(types::Fd(s.fd), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(u64::from(slot) << 8 | OP_SEND);
        self.push(sqe);
    }

    fn give_back(&mut self, bid: u16) {
        self.bufs.put(bid);
        self.bufs.publish();
        while let Some(slot) = self.starved.pop() {
            let s = &mut self.slots[slot as usize];
            if s.starved && !s.dropped {
                s.starved = false;
                self.arm_recv(slot);
                break;
            }
        }
    }

    /// Handles every completion waiting in the queue; returns how many there were.
    fn reap(&mut self) -> usize {
        let mut done = [(0u64, 0i32, 0u32); 64];
        let mut total = 0;
        loop {
            let mut n = 0;
            for cqe in self.ring.completion().take(done.len()) {
                done[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                n += 1;
            }
            for &(data, res, flags) in &done[..n] {
                self.complete((data >> 8) as u32, data & 0xff, res, flags);
            }
            total += n;
            if n < done.len() {
                return total;
            }
        }
    }

    fn complete(&mut self, slot: u32, op: u64, res: i32, flags: u32) {
        let s = &mut self.slots[slot as usize];
        match op {
            OP_RECV => {
                s.recv_armed = false;
                if res > 0 {
                    let bid = cqueue::buffer_select(flags).expect("a provided buffer");
                    if s.dropped {
                        self.give_back(bid);
                    } else {
                        s.inbox = Some((bid, res as usize, 0));
                    }
                } else if res == 0 {
                    s.eof = true;
                } else if res == -libc::ENOBUFS {
                    if !s.dropped {
                        s.starved = true;
                        self.starved.push(slot);
                    }
                } else if res != -libc::ECANCELED || !s.dropped {
                    s.read_err = -res;
                }
                let s = &mut self.slots[slot as usize];
                if let Some(w) = s.read_waker.take() {
                    self.wake_list.push(w);
                }
            }
            OP_SEND => {
                if s.dropped || res < 0 {
                    s.sending = false;
                    if res < 0 && !s.dropped {
                        s.write_err = -res;
                    }
                    s.out.clear();
                    s.in_flight.clear();
                    s.sent = 0;
                } else {
                    s.sent += res as usize;
                    if s.sent < s.in_flight.len() {
                        self.start_send(slot);
                        return;
                    }
                    s.in_flight.clear();
                    s.sent = 0;
                    if s.out.is_empty() {
                        s.sending = false;
                        let idle = std::mem::take(&mut s.in_flight);
                        if self.spare.len() < SPARE_MAX && idle.capacity() <= WRITE_CAP {
                            self.spare.push(idle);
                        }
                    } else {
                        std::mem::swap(&mut s.out, &mut s.in_flight);
                        self.start_send(slot);
                    }
                }
                let s = &mut self.slots[slot as usize];
                if let Some(w) = s.write_waker.take() {
                    self.wake_list.push(w);
                }
            }
            _ => s.cancelling = false,
        }
        self.release_if_done(slot);
    }

    fn release_if_done(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.dropped || s.recv_armed || s.sending || s.cancelling {
            return;
        }
        let inbox = s.inbox.take();
        // SAFETY: the descriptor was taken over from the TcpStream and nothing else closes it;
        // no operation on it is left in the kernel.
        unsafe { libc::close(s.fd) };
        *s = Slot {
            fd: -1,
            ..Slot::default()
        };
        self.free.push(slot);
        if let Some((bid, _, _)) = inbox {
            self.give_back(bid);
        }
    }

    /// Submits what is queued and handles what completed, until neither is left.
    fn pump(&mut self) {
        loop {
            if !self.ring.submission().is_empty()
                && self
                    .ring
                    .submit()
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EINTR))
            {
                continue;
            }
            if self.reap() == 0 && self.ring.submission().is_empty() {
                return;
            }
        }
    }

    pub(super) fn register(&mut self, fd: RawFd) -> u32 {
        let slot = Slot {
            fd,
            ..Slot::default()
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub(super) fn poll_read_ready(
        &mut self,
        slot: u32,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let s = &mut self.slots[slot as usize];
        if s.inbox.is_some() || s.eof {
            return Poll::Ready(Ok(()));
        }
        if s.read_err != 0 {
            return Poll::Ready(Err(errno(s.read_err)));
        }
        if !s
            .read_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            s.read_waker = Some(cx.waker().clone());
        }
        if !s.starved {
            self.arm_recv(slot);
        }
        Poll::Pending
    }

    pub(super) fn poll_read(
        &mut self,
        slot: u32,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.poll_read_ready(slot, cx) {
            return Poll::Ready(Err(e));
        }
        let s = &mut self.slots[slot as usize];
        if s.inbox.is_none() && !s.eof {
            return Poll::Pending;
        }
        let s = &mut self.slots[slot as usize];
        let Some((bid, len, taken)) = s.inbox else {
            // End of stream: nothing appended. A read error was returned above.
            return Poll::Ready(Ok(()));
        };
        let n = buf.remaining().min(len - taken);
        // SAFETY: the kernel wrote `len` bytes into buffer `bid` and gave it to this socket; it
        // is not handed back to the kernel until fully copied out.
        let data = unsafe { std::slice::from_raw_parts(self.bufs.buffer(bid).add(taken), n) };
        buf.put_slice(data);
        if taken + n == len {
            s.inbox = None;
            self.give_back(bid);
        } else {
            s.inbox = Some((bid, len, taken + n));
        }
        Poll::Ready(Ok(()))
    }

    pub(super) fn poll_write(
        &mut self,
        slot: u32,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let s = &mut self.slots[slot as usize];
        if s.write_err != 0 {
            return Poll::Ready(Err(errno(s.write_err)));
        }
        if s.out.len() + s.in_flight.len() >= WRITE_CAP {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(WRITE_CAP);
        if s.sending {
            s.out.extend_from_slice(&data[..n]);
            return Poll::Ready(Ok(n));
        }
        if s.in_flight.capacity() == 0 {
            if let Some(b) = self.spare.pop() {
                self.slots[slot as usize].in_flight = b;
            }
        }
        let s = &mut self.slots[slot as usize];
        s.in_flight.extend_from_slice(&data[..n]);
        self.start_send(slot);
        Poll::Ready(Ok(n))
    }

    pub(super) fn poll_flush(&mut self, slot: u32, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &mut self.slots[slot as usize];
        if s.write_err != 0 {
            return Poll::Ready(Err(errno(s.write_err)));
        }
        if s.sending {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    pub(super) fn fd(&self, slot: u32) -> RawFd {
        self.slots[slot as usize].fd
    }

    /// The stream is gone: whatever is still in the kernel for it is cancelled, and the
    /// descriptor closed once the last completion is in.
    pub(super) fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.dropped = true;
        s.read_waker = None;
        s.write_waker = None;
        s.out.clear();
        if (s.recv_armed || s.sending) && !s.cancelling {
            s.cancelling = true;
            let fd = s.fd;
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(u64::from(slot) << 8 | OP_CANCEL);
            self.push(sqe);
        }
        self.release_if_done(slot);
    }
}

/// Builds this thread's ring and registers its descriptor with the thread's reactor.
pub(super) fn install() -> io::Result<()> {
    let mut driver = Box::new(Driver::new(RING_ENTRIES, BUF_COUNT)?);
    let fd = driver.ring.as_raw_fd();
    // SAFETY: the ring's descriptor stays open while registered: `readiness` is the first
    // field of the driver, dropped before the ring.
    driver.readiness = Some(unsafe {
        AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE)?
    });
    DRIVER.with(|d| *d.borrow_mut() = Some(driver));
    Ok(())
}

pub(super) fn installed() -> bool {
    DRIVER.with(|d| d.borrow().is_some())
}

/// Runs `f` on this thread's driver if it is the one with `id`.
pub(super) fn with<R>(id: u64, f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    let (r, mut wake) = DRIVER
        .try_with(|d| {
            let mut d = d.borrow_mut();
            let d = d.as_mut().filter(|d| d.id == id)?;
            let r = f(d);
            Some((r, std::mem::take(&mut d.wake_list)))
        })
        .ok()
        .flatten()?;
    for w in wake.drain(..) {
        w.wake();
    }
    DRIVER.with(|d| {
        if let Some(d) = d.borrow_mut().as_mut() {
            if d.wake_list.capacity() == 0 {
                d.wake_list = wake;
            }
        }
    });
    Some(r)
}

/// This thread's driver id, if it has one.
pub(super) fn current_id() -> Option<u64> {
    DRIVER.with(|d| d.borrow().as_ref().map(|d| d.id))
}

/// Adds `fd` to this thread's ring; `None` if the thread has none.
pub(super) fn register(fd: RawFd) -> Option<(u64, u32)> {
    DRIVER.with(|d| d.borrow_mut().as_mut().map(|d| (d.id, d.register(fd))))
}

/// The driver task: submits what sessions queued during this pass of the run queue in one
/// `io_uring_enter`, and hands out completions when the ring's descriptor turns readable.
pub(super) fn run() -> impl std::future::Future<Output = ()> + Send {
    std::future::poll_fn(|cx| loop {
        let Some(id) = current_id() else {
            return Poll::Ready(());
        };
        let again = with(id, |d| {
            if !d.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                d.task = Some(cx.waker().clone());
            }
            d.pump();
            match d.readiness.as_ref().map(|r| r.poll_read_ready(cx)) {
                Some(Poll::Ready(Ok(mut guard))) => {
                    guard.clear_ready();
                    true
                }
                _ => false,
            }
        });
        if again != Some(true) {
            return Poll::Pending;
        }
    })
}
