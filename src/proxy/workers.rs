//! Session worker threads: one single-threaded runtime per core, each owning the sessions it
//! is given, so a session's client and backend sockets are polled, and its wake-ups handled,
//! on one thread for its whole life.
//!
//! Why not one work-stealing runtime: on a proxy every query is two short socket hops, and a
//! shared scheduler hands those wake-ups between threads (a futex wake and a cache miss each
//! time). Keeping each session on its own thread is what HAProxy's per-thread pollers do; the
//! workers also accept new sessions themselves (`super::server`) and keep them while their
//! loads stay within a bound of each other.
//! For the same reason a worker batches its per-query metrics ([`crate::metrics::batch`]) and
//! adds them to the shared series when it is about to sleep.
//!
//! With the default `epoll` engine a worker runs its own loop ([`super::worker_loop`]) over
//! its own epoll set; the `tokio` and `io-uring` engines run a current-thread tokio runtime.

use crate::protocol::spare;
use crate::protocol::uring::{self, IoEngine};
use crate::proxy::worker_loop::{self, LoopHandle};
use crate::timer::TimerThread;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A worker whose sessions took or gave back no read buffer for this long frees its spare ones:
/// long enough that a busy worker never pays for fresh buffers, short enough that a proxy whose
/// sessions went idle after a burst of logins soon holds no more than they need.
const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The session workers. Dropping this stops their threads; tasks still on them are dropped.
pub struct Workers {
    workers: Vec<Worker>,
    engine: IoEngine,
    /// The tokio runtime own-loop workers enter when the caller had none (tests, tools).
    _helper: Option<Helper>,
}

struct Worker {
    spawner: Spawner,
    load: Arc<AtomicUsize>,
    /// Dropped to stop the thread.
    _stop: Stop,
}

enum Spawner {
    Tokio(Handle),
    Own(LoopHandle),
}

enum Stop {
    /// Dropped (or sent) to stop a tokio worker; its runtime is dropped on its own thread,
    /// because dropping a runtime from inside another one's async context is not allowed.
    Tokio(#[allow(dead_code)] oneshot::Sender<()>),
    Own(LoopHandle),
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Stop::Own(handle) = self {
            handle.stop();
        }
    }
}

struct Helper(Option<tokio::runtime::Runtime>);

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The engine `proxy.io-engine` asks for, if this kernel lets the process use it: io_uring is
/// probed once here and, when refused, the one warning says why and epoll is used.
pub fn io_engine(configured: &str) -> IoEngine {
    let wanted = IoEngine::parse(configured).unwrap_or_default();
    if wanted != IoEngine::IoUring {
        return wanted;
    }
    match uring::probe() {
        Ok(()) => IoEngine::IoUring,
        Err(e) => {
            tracing::warn!(error = %e, "proxy.io-engine = \"io-uring\" but io_uring is unavailable here (seccomp, kernel.io_uring_disabled or a kernel before 5.19): sessions use epoll");
            IoEngine::Epoll
        }
    }
}

/// The most tasks a worker may have and still keep a session it accepted, when the
/// least-loaded worker has `least`: two more, or an eighth more for large counts.
fn near_enough(least: usize) -> usize {
    least + (least / 8).max(2)
}

/// Counts a task against its worker's load until dropped.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` workers (at least one), each a named thread with its own reactor; their timers share one timer thread.
    pub fn start(count: usize) -> io::Result<Workers> {
        Self::start_with(count, IoEngine::Epoll)
    }

    /// `start` with plain-TCP sessions carried by `engine`; the caller has checked that the
    /// kernel allows it (a worker that still cannot build its ring logs why and uses epoll).
    pub fn start_with(count: usize, engine: IoEngine) -> io::Result<Workers> {
        let timers = TimerThread::start()?;
        let mut helper = None;
        let foreign = match Handle::try_current() {
            Ok(h) => h,
            Err(_) => {
                let rt = Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("tiproxy-worker-io")
                    .enable_all()
                    .build()?;
                let h = rt.handle().clone();
                helper = Some(Helper(Some(rt)));
                h
            }
        };
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let worker = match engine {
                IoEngine::Epoll => own_worker(i, &timers, foreign.clone())?,
                IoEngine::Tokio | IoEngine::IoUring => tokio_worker(i, &timers, engine)?,
            };
            workers.push(worker);
        }
        Ok(Workers {
            workers,
            engine,
            _helper: helper,
        })
    }

    /// One worker per CPU the process may run on.
    pub fn per_core(engine: IoEngine) -> io::Result<Workers> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start_with(cores, engine)
    }

    /// The engine the workers were started with.
    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Tasks running on each worker, in worker order.
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs `task` on the worker with the fewest tasks; it stays on that thread until it ends.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_counted(self.least_loaded(), task);
    }

    /// Runs `task` on worker `here` (the one calling, for a session it accepted) unless that
    /// worker has more than [`near_enough`] tasks beyond the least-loaded one, which then
    /// runs it. Starting on the accepting thread spares a hand-off and a wake-up per
    /// session; the bound keeps a worker that is idle whenever connections arrive (and so
    /// accepts most of them) from collecting the long-lived sessions of a burst of logins.
    pub fn spawn_near<F>(&self, here: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let least = self.least_loaded();
        let mine = &self.workers[here];
        let mine_load = mine.load.load(Ordering::Relaxed);
        let least_load = least.load.load(Ordering::Relaxed);
        let worker = if mine_load <= near_enough(least_load) {
            mine
        } else {
            least
        };
        self.spawn_counted(worker, task);
    }

    /// Runs `task` on worker `index`, outside the load count: the listener's acceptors.
    pub(crate) fn spawn_uncounted<F>(&self, index: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.workers[index].spawner {
            Spawner::Tokio(handle) => drop(handle.spawn(task)),
            Spawner::Own(handle) => handle.spawn(task),
        }
    }

    /// Whether the workers run their own loops (the `epoll` engine), where each can accept.
    pub fn accept_on_workers(&self) -> bool {
        self.workers
            .iter()
            .all(|w| matches!(w.spawner, Spawner::Own(_)))
    }

    fn least_loaded(&self) -> &Worker {
        self.workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker")
    }

    fn spawn_counted<F>(&self, worker: &Worker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        worker.load.fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard(worker.load.clone());
        // Boxed: an async block that awaits a future it captured holds it twice (once as the
        // capture, once as the awaited value), which would double every session's memory.
        let task = Box::pin(task);
        let task = async move {
            let _guard = guard;
            task.await;
        };
        match &worker.spawner {
            Spawner::Tokio(handle) => drop(handle.spawn(task)),
            Spawner::Own(handle) => handle.spawn(task),
        }
    }
}

/// A worker running its own loop (the `epoll` engine). Rare tokio I/O of its sessions (a
/// backend dialled by name, a spawned clean-up) goes to `foreign`'s reactor.
fn own_worker(i: usize, timers: &TimerThread, foreign: Handle) -> io::Result<Worker> {
    let timer_use = timers.use_for_thread();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("tiproxy-worker-{i}"))
        .spawn(move || {
            crate::metrics::batch::batch_on_this_thread();
            let _timers = timer_use.enter();
            let _tokio = foreign.enter();
            let (handle, runner) = match worker_loop::install() {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            handle.spawn(spare::release_while_unused(SPARE_IDLE));
            let _ = tx.send(Ok(handle));
            // Its tasks may hold timers: they are dropped before `_timers`.
            runner.run(crate::metrics::batch::flush);
        })?;
    let handle = rx
        .recv()
        .map_err(|_| io::Error::other("a session worker ended while starting"))??;
    Ok(Worker {
        spawner: Spawner::Own(handle.clone()),
        load: Arc::new(AtomicUsize::new(0)),
        _stop: Stop::Own(handle),
    })
}

/// A worker on a current-thread tokio runtime (the `tokio` and `io-uring` engines).
fn tokio_worker(i: usize, timers: &TimerThread, engine: IoEngine) -> io::Result<Worker> {
    // No signal or process driver: tokio is built without them (Cargo.toml), as every
    // park of a runtime that has them tries a process-wide lock to reap child processes.
    // No timer driver either: it would process its wheel at every park (twice a query);
    // the workers' rare timers run on one shared timer thread (`crate::timer`).
    let rt = Builder::new_current_thread()
        .enable_io()
        .on_thread_park(crate::metrics::batch::flush)
        .build()?;
    let timer_use = timers.use_for_thread();
    let handle = rt.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("tiproxy-worker-{i}"))
        .spawn(move || {
            crate::metrics::batch::batch_on_this_thread();
            let _timers = timer_use.enter();
            rt.block_on(async {
                drop(tokio::spawn(spare::release_while_unused(SPARE_IDLE)));
                if engine == IoEngine::IoUring {
                    match uring::start_on_this_thread() {
                        Ok(drive) => drop(tokio::spawn(drive)),
                        Err(e) => tracing::warn!(worker = i, error = %e, "io_uring ring not created: this worker's sessions use epoll"),
                    }
                }
                let _ = stopped.await;
            });
            // Its tasks may hold timers: dropped while the timer thread still runs.
            drop(rt);
        })?;
    Ok(Worker {
        spawner: Spawner::Tokio(handle),
        load: Arc::new(AtomicUsize::new(0)),
        _stop: Stop::Tokio(stop),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits (at most a second) for the two workers' loads to fall back to none.
    fn assert_all_tasks_end(workers: &Workers) {
        for _ in 0..100 {
            if workers.loads() == vec![0, 0] {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("finished tasks still counted: {:?}", workers.loads());
    }

    #[test]
    fn tasks_spread_to_the_least_loaded_worker_and_stay_on_its_thread() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, hold) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut hold = hold.clone();
            workers.spawn(async move {
                let before = std::thread::current().name().map(str::to_owned);
                let _ = hold.wait_for(|go| *go).await;
                crate::timer::sleep(Duration::from_millis(1)).await;
                let after = std::thread::current().name().map(str::to_owned);
                tx.send((before, after)).unwrap();
            });
        }
        assert_eq!(workers.loads(), vec![2, 2]);
        release.send(true).unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            let (before, after) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(before, after, "a task must not move between threads");
            names.push(before.unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "tiproxy-worker-0",
                "tiproxy-worker-0",
                "tiproxy-worker-1",
                "tiproxy-worker-1"
            ]
        );
        assert_all_tasks_end(&workers);
    }

    #[test]
    fn a_session_stays_on_the_worker_that_accepted_it_until_that_one_is_too_far_ahead() {
        let workers = Workers::start(2).unwrap();
        let (release, hold) = tokio::sync::watch::channel(false);
        let held = || {
            let mut hold = hold.clone();
            async move {
                let _ = hold.wait_for(|go| *go).await;
            }
        };
        // Two more than the least-loaded worker's none is still near enough.
        for _ in 0..3 {
            workers.spawn_near(0, held());
        }
        assert_eq!(workers.loads(), vec![3, 0]);
        workers.spawn_near(0, held());
        assert_eq!(workers.loads(), vec![3, 1]);
        for _ in 0..20 {
            workers.spawn_near(1, held());
        }
        // Worker 1 keeps what it accepts while it has at most two more than worker 0.
        assert_eq!(workers.loads(), vec![11, 13]);
        assert_eq!(near_enough(0), 2);
        assert_eq!(near_enough(100), 112);
        release.send(true).unwrap();
        assert_all_tasks_end(&workers);
    }

    #[test]
    fn a_worker_adds_its_batched_query_counts_when_it_goes_idle() {
        let workers = Workers::start(1).unwrap();
        let metrics = crate::metrics::Metrics::new().backend("workers-test:1");
        let counted = metrics.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn(async move {
            counted.record(crate::protocol::constants::cmd::QUERY, 0.001, true, (0, 0));
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        for _ in 0..100 {
            if metrics.totals().queries == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "an idle worker still holds its count: {:?}",
            metrics.totals()
        );
    }
}
