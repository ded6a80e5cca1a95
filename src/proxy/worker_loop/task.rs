//! A task of a worker's own loop: its future, its scheduling state, and the waker that puts it
//! back on its worker's queue (directly on that thread, through the handed-over queue and the
//! eventfd from any other).

use super::Shared;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

pub(super) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

const IDLE: u8 = 0;
const SCHEDULED: u8 = 1;
const RUNNING: u8 = 2;
/// Running, and woken while it ran: queued again once the poll returns.
const NOTIFIED: u8 = 3;
const DONE: u8 = 4;

/// Not yet in its worker's task table.
const UNLISTED: usize = usize::MAX;

pub(super) struct Task {
    state: AtomicU8,
    /// Touched only on the worker thread: polled there, dropped there.
    future: UnsafeCell<Option<BoxFuture>>,
    /// Index in the worker's task table (worker thread only).
    key: Cell<usize>,
    shared: Arc<Shared>,
}

// SAFETY: `future` and `key` are only used on the worker thread that owns `shared` (the loop
// polls and drops futures there, and nothing else reaches them); the rest is atomic.
unsafe impl Sync for Task {}
unsafe impl Send for Task {}

impl Task {
    /// A task ready to run; hand it to `schedule_new`.
    pub(super) fn new(future: BoxFuture, shared: Arc<Shared>) -> Arc<Task> {
        Arc::new(Task {
            state: AtomicU8::new(SCHEDULED),
            future: UnsafeCell::new(Some(future)),
            key: Cell::new(UNLISTED),
            shared,
        })
    }
}

/// The worker-thread half: which loop runs here, its run queue and its table of live tasks
/// (kept so a stopping worker can drop the futures, which hold their own wakers in a cycle).
pub(super) struct Local {
    shared: Cell<*const Shared>,
    queue: RefCell<VecDeque<Arc<Task>>>,
    table: RefCell<Vec<Option<Arc<Task>>>>,
    free: RefCell<Vec<usize>>,
}

thread_local! {
    pub(super) static LOCAL: Local = const {
        Local {
            shared: Cell::new(std::ptr::null()),
            queue: RefCell::new(VecDeque::new()),
            table: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
        }
    };
}

/// Makes the calling thread the one that runs `shared`'s tasks.
pub(super) fn bind_this_thread(shared: &Arc<Shared>) {
    LOCAL.with(|l| l.shared.set(Arc::as_ptr(shared)));
}

/// Queues a task handed over from another thread, on its own worker thread.
pub(super) fn enqueue_here(task: Arc<Task>) {
    LOCAL.with(|l| l.queue.borrow_mut().push_back(task));
}

/// Queues a task that is `SCHEDULED` already (new, or just moved there by a wake).
pub(super) fn enqueue(task: Arc<Task>) {
    let leftover = LOCAL.with(|l| {
        if l.shared.get() == Arc::as_ptr(&task.shared) {
            l.queue.borrow_mut().push_back(task);
            None
        } else {
            Some(task)
        }
    });
    if let Some(task) = leftover {
        let shared = task.shared.clone();
        shared.hand_over(task);
    }
}

fn schedule(task: &Arc<Task>) -> bool {
    let mut s = task.state.load(Ordering::Acquire);
    loop {
        let (to, queue) = match s {
            IDLE => (SCHEDULED, true),
            RUNNING => (NOTIFIED, false),
            _ => return false,
        };
        match task
            .state
            .compare_exchange_weak(s, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return queue,
            Err(actual) => s = actual,
        }
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);

unsafe fn clone(p: *const ()) -> RawWaker {
    // SAFETY: `p` came from an `Arc<Task>` that the waker being cloned keeps alive.
    unsafe { Arc::increment_strong_count(p as *const Task) };
    RawWaker::new(p, &VTABLE)
}

unsafe fn wake(p: *const ()) {
    // SAFETY: the waker owns one strong count, consumed here.
    let task = unsafe { Arc::from_raw(p as *const Task) };
    if schedule(&task) {
        enqueue(task);
    }
}

unsafe fn wake_by_ref(p: *const ()) {
    // SAFETY: the waker keeps the task alive for this call.
    let task = ManuallyDrop::new(unsafe { Arc::from_raw(p as *const Task) });
    if schedule(&task) {
        enqueue(Arc::clone(&task));
    }
}

unsafe fn drop_waker(p: *const ()) {
    // SAFETY: the waker owns one strong count, released here.
    unsafe { Arc::decrement_strong_count(p as *const Task) };
}

/// Polls `task` once, on its worker thread.
pub(super) fn run(task: Arc<Task>) {
    if task.key.get() == UNLISTED {
        list(&task);
    }
    task.state.store(RUNNING, Ordering::Release);
    // A waker borrowing this `Arc`: cloned (one count) only by whoever keeps it.
    let raw = RawWaker::new(Arc::as_ptr(&task).cast(), &VTABLE);
    // SAFETY: the vtable's contract holds for a pointer from `Arc::as_ptr`; ManuallyDrop keeps
    // the borrowed count from being released.
    let waker = ManuallyDrop::new(unsafe { Waker::from_raw(raw) });
    let mut cx = Context::from_waker(&waker);
    // SAFETY: only this thread touches the future, and not re-entrantly: a task is polled
    // only from the loop, never from inside another poll.
    let slot = unsafe { &mut *task.future.get() };
    let Some(future) = slot.as_mut() else {
        return;
    };
    let finished =
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
            Ok(Poll::Pending) => false,
            // A panic ends the task only, as on tokio; the panic hook has reported it.
            Ok(Poll::Ready(())) | Err(_) => true,
        };
    if finished {
        finish(&task);
        return;
    }
    if task
        .state
        .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        task.state.store(SCHEDULED, Ordering::Release);
        LOCAL.with(|l| l.queue.borrow_mut().push_back(task));
    }
}

fn list(task: &Arc<Task>) {
    LOCAL.with(|l| {
        let mut table = l.table.borrow_mut();
        let key = match l.free.borrow_mut().pop() {
            Some(k) => {
                table[k] = Some(task.clone());
                k
            }
            None => {
                table.push(Some(task.clone()));
                table.len() - 1
            }
        };
        task.key.set(key);
    });
}

/// Ends `task`: no wake queues it again, its future is dropped, it leaves the table.
fn finish(task: &Arc<Task>) {
    task.state.store(DONE, Ordering::Release);
    // SAFETY: on the worker thread, outside any poll of this task.
    let future = unsafe { (*task.future.get()).take() };
    // Dropped with no borrow held: dropping may wake other tasks of this thread.
    drop(future);
    let key = task.key.replace(UNLISTED);
    if key != UNLISTED {
        let entry = LOCAL.with(|l| {
            let e = l.table.borrow_mut()[key].take();
            l.free.borrow_mut().push(key);
            e
        });
        drop(entry);
    }
}

/// The next queued task of this thread.
#[inline]
pub(super) fn next() -> Option<Arc<Task>> {
    LOCAL.with(|l| l.queue.borrow_mut().pop_front())
}

pub(super) fn has_queued() -> bool {
    LOCAL.with(|l| !l.queue.borrow().is_empty())
}

/// Drops every task of this thread, run or not: the worker stops.
pub(super) fn drop_all(handed_over: Vec<Arc<Task>>) {
    for task in handed_over {
        finish(&task);
    }
    // Dropping futures may queue others; repeat until nothing is left.
    for _ in 0..1000 {
        let queued: Vec<_> = LOCAL.with(|l| l.queue.borrow_mut().drain(..).collect());
        let listed: Vec<_> = LOCAL.with(|l| {
            l.free.borrow_mut().clear();
            l.table.borrow_mut().drain(..).flatten().collect()
        });
        if queued.is_empty() && listed.is_empty() {
            return;
        }
        for task in queued.iter().chain(listed.iter()) {
            task.key.set(UNLISTED);
            finish(task);
        }
    }
}
