//! Timers that work on the session workers, whose runtimes have no timer driver of their own.
//!
//! Why: a runtime with a timer driver looks for the next expiry and processes its wheel at every
//! park, and a worker parks twice per query, while a session arms a timer only at login, in the
//! middle of a half-sent packet and at its end. So the workers share one timer thread
//! ([`TimerThread`]): a timer made on a worker registers there, and its expiry wakes the
//! session's task across threads. On any other thread these are tokio's own functions.
//!
//! All of `src/` makes its timers through this module (a unit test below enforces it), since a
//! tokio timer made directly on a worker would panic for want of a driver.

use std::cell::RefCell;
use std::future::IntoFuture;
use std::time::Duration;
use tokio::runtime::{Builder, Handle};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, Sleep, Timeout};

thread_local! {
    /// The timer driver of this thread's timers, when the thread's own runtime has none.
    static DRIVER: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// Runs `make` with the thread's timer driver entered, so the timer it builds registers there.
fn on_driver<R>(make: impl FnOnce() -> R) -> R {
    DRIVER.with(|d| match d.borrow().as_ref() {
        Some(handle) => {
            let _entered = handle.enter();
            make()
        }
        None => make(),
    })
}

/// `tokio::time::sleep`, on this thread's timer driver.
pub fn sleep(duration: Duration) -> Sleep {
    on_driver(|| tokio::time::sleep(duration))
}

/// `tokio::time::sleep_until`, on this thread's timer driver.
pub fn sleep_until(deadline: Instant) -> Sleep {
    on_driver(|| tokio::time::sleep_until(deadline))
}

/// `tokio::time::timeout`, on this thread's timer driver.
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    on_driver(|| tokio::time::timeout(duration, future))
}

/// `tokio::time::timeout_at`, on this thread's timer driver.
pub fn timeout_at<F: IntoFuture>(deadline: Instant, future: F) -> Timeout<F::IntoFuture> {
    on_driver(|| tokio::time::timeout_at(deadline, future))
}

/// `tokio::time::interval`, on this thread's timer driver.
pub fn interval(period: Duration) -> Interval {
    on_driver(|| tokio::time::interval(period))
}

/// The thread that drives the workers' timers. It stops once every [`TimerUse`] made from it
/// is dropped, so no worker outlives the driver of the timers its tasks hold (a timer whose
/// driver is gone panics when polled).
pub struct TimerThread {
    handle: Handle,
    users: mpsc::Sender<()>,
}

/// A thread's claim on the timer thread: it keeps the timer thread running while it lives.
pub struct TimerUse {
    handle: Handle,
    _users: mpsc::Sender<()>,
}

/// While it lives, this module's timers made on its thread register with the timer thread.
pub struct Entered {
    _use: TimerUse,
}

impl TimerThread {
    pub fn start() -> std::io::Result<TimerThread> {
        let rt = Builder::new_current_thread().enable_time().build()?;
        let handle = rt.handle().clone();
        let (users, mut gone) = mpsc::channel::<()>(1);
        std::thread::Builder::new()
            .name("tiproxy-timer".into())
            .spawn(move || {
                // Nothing is ever sent: `recv` ends when the last sender is dropped.
                rt.block_on(async move { while gone.recv().await.is_some() {} });
            })?;
        Ok(TimerThread { handle, users })
    }

    /// A claim to move into the thread that will use it.
    pub fn use_for_thread(&self) -> TimerUse {
        TimerUse {
            handle: self.handle.clone(),
            _users: self.users.clone(),
        }
    }
}

impl TimerUse {
    /// Makes the calling thread's timers register with the timer thread.
    pub fn enter(self) -> Entered {
        DRIVER.with(|d| *d.borrow_mut() = Some(self.handle.clone()));
        Entered { _use: self }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        DRIVER.with(|d| *d.borrow_mut() = None);
    }
}

/// Polls `future` to completion on the current thread; for tests of the timers.
#[cfg(test)]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layering::rust_files;
    use std::path::Path;

    #[test]
    fn a_runtime_without_a_timer_driver_sleeps_and_times_out_on_the_timer_thread() {
        let timers = TimerThread::start().unwrap();
        let claim = timers.use_for_thread();
        let user = std::thread::spawn(move || {
            let _entered = claim.enter();
            block_on(async {
                let started = Instant::now();
                sleep(Duration::from_millis(20)).await;
                assert!(started.elapsed() >= Duration::from_millis(20));
                let never = std::future::pending::<()>();
                assert!(timeout(Duration::from_millis(10), never).await.is_err());
                assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
                let mut tick = interval(Duration::from_millis(5));
                tick.tick().await;
                tick.tick().await;
            })
        });
        user.join()
            .expect("timers work without a driver of the thread's own");
    }

    #[test]
    fn the_timer_thread_stops_after_its_last_user() {
        let timers = TimerThread::start().unwrap();
        let user = timers.use_for_thread();
        let probe = timers.users.downgrade();
        drop(timers);
        assert!(probe.upgrade().is_some(), "a user keeps it running");
        drop(user);
        assert!(probe.upgrade().is_none());
    }

    /// The lines of `text` (a source file) outside its test module that make a tokio timer.
    fn direct_timers(text: &str) -> Vec<(usize, String)> {
        let makers = ["sleep", "sleep_until", "timeout", "timeout_at", "interval"];
        // Test modules sit at the end of a file and run on tokio's own test runtimes.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut found = Vec::new();
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or_default();
            let Some(at) = line.find("tokio::time::") else {
                continue;
            };
            let rest = &line[at + "tokio::time::".len()..];
            // `tokio::time::x` or `tokio::time::{x, y}`: only the names the path takes.
            let path = match rest.strip_prefix('{') {
                Some(group) => &group[..group.find('}').unwrap_or(group.len())],
                None => {
                    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'));
                    &rest[..end.unwrap_or(rest.len())]
                }
            };
            if path
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| makers.contains(&w))
            {
                found.push((n + 1, line.trim().to_owned()));
            }
        }
        found
    }

    #[test]
    fn the_scan_finds_direct_timers_and_only_those() {
        let text = "use tokio::time::{Instant, timeout};\n\
                    let d = tokio::time::Instant::now() + timeout;\n\
                    tokio::time::sleep(d).await;\n\
                    // tokio::time::sleep in a comment\n\
                    #[cfg(test)]\nmod tests { tokio::time::sleep(d); }\n";
        let lines: Vec<usize> = direct_timers(text).into_iter().map(|(n, _)| n).collect();
        assert_eq!(lines, [1, 3]);
    }

    /// A tokio timer made directly in code a worker may run panics there, so outside this
    /// module and outside tests every timer comes from here.
    #[test]
    fn every_timer_in_src_comes_from_this_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut bad = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("timer.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in direct_timers(&text) {
                bad.push(format!("{}:{n}: {line}", file.display()));
            }
        }
        assert!(
            bad.is_empty(),
            "make timers with crate::timer, not tokio::time (they panic on a worker):\n{}",
            bad.join("\n")
        );
    }
}
