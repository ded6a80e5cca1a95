//! A worker thread's own task loop over its own epoll set (`protocol::epoll`): the default
//! engine of the session workers. Per wake-up it does what a proxy needs and no more: one
//! `epoll_wait`, a readiness bit set and a queue push per socket event, one poll per woken
//! task. tokio stays entered on the thread for what sessions do rarely (dialling a backend by
//! name, a spawned clean-up), and tokio's synchronisation types and our timers work unchanged,
//! as they only need wakers.

mod task;

use crate::protocol::epoll::{Events, Reactor};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use task::Task;

/// Tasks run between two looks at the sockets while work keeps coming, so a busy worker
/// still hears new events in good time.
const BATCH: usize = 128;

/// What other threads share with a worker loop.
pub(crate) struct Shared {
    reactor: Arc<Reactor>,
    /// Tasks spawned or woken from other threads.
    handed: Mutex<Vec<Arc<Task>>>,
    has_handed: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn hand_over(&self, task: Arc<Task>) {
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        self.has_handed.store(true, Ordering::SeqCst);
        self.reactor.notify();
    }

    /// Tasks handed over since the last call, if any (a plain load when there are none).
    #[inline]
    fn take_handed(&self) -> Option<Vec<Arc<Task>>> {
        if !self.has_handed.load(Ordering::Relaxed)
            || !self.has_handed.swap(false, Ordering::SeqCst)
        {
            return None;
        }
        Some(std::mem::take(
            &mut *self.handed.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// Spawns onto, and stops, one worker loop from any thread.
#[derive(Clone)]
pub struct LoopHandle {
    shared: Arc<Shared>,
}

impl LoopHandle {
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        task::enqueue(Task::new(Box::pin(future), self.shared.clone()));
    }

    /// Asks the loop to drop its tasks and return.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.has_handed.store(true, Ordering::SeqCst);
        self.shared.reactor.notify();
    }
}

/// Creates this thread's reactor and loop; `run` then runs it here.
pub fn install() -> io::Result<(LoopHandle, Runner)> {
    let reactor = Reactor::install()?;
    let shared = Arc::new(Shared {
        reactor,
        handed: Mutex::new(Vec::new()),
        has_handed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    task::bind_this_thread(&shared);
    Ok((
        LoopHandle {
            shared: shared.clone(),
        },
        Runner { shared },
    ))
}

/// Runs the loop installed on this thread (not `Send`: it belongs here).
pub struct Runner {
    shared: Arc<Shared>,
}

impl Runner {
    /// Runs tasks until `LoopHandle::stop`; `before_sleep` runs each time the worker is about
    /// to wait with nothing to do. Every task left is dropped before this returns.
    pub fn run(self, before_sleep: impl Fn()) {
        let shared = &self.shared;
        let mut events = Events::default();
        loop {
            for _ in 0..BATCH {
                let Some(t) = task::next() else { break };
                task::run(t);
            }
            if let Some(handed) = shared.take_handed() {
                handed.into_iter().for_each(task::enqueue_here);
            }
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let timeout = if task::has_queued() {
                0
            } else {
                before_sleep();
                shared.reactor.prepare_sleep();
                if shared.has_handed.load(Ordering::SeqCst) {
                    0
                } else {
                    -1
                }
            };
            if let Err(e) = shared.reactor.wait(timeout, &mut events) {
                tracing::error!(error = %e, "a session worker cannot wait for its sockets; its sessions end");
                break;
            }
        }
        task::drop_all(shared.take_handed().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests;
