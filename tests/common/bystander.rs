//! A session that keeps running queries while a test does something hostile next to it, and
//! fails the test if any of them failed.

use super::raw::RawConn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A session that runs a query every few milliseconds until stopped; any failure is kept.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Bystander {
    pub fn start(mut c: RawConn) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, q, f) = (stop.clone(), queries.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match c.query("SELECT 1 + 1") {
                    Ok(r) if r[0].rows[0][0].as_deref() == Some("2") => {}
                    other => f.lock().unwrap().push(format!("{other:?}")),
                }
                q.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Bystander {
            stop,
            queries,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the loop and asserts it ran and never failed.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "bystander session failed: {failures:?}"
        );
        let n = self.queries.load(Ordering::SeqCst);
        assert!(n > 10, "bystander ran only {n} queries");
        n
    }
}
