//! Traffic capture and replay (TiProxy's `/api/traffic/...`): the capture records sessions'
//! commands into files, the replay plays them back against the backends, and one job runs
//! at a time. Sessions look at one flag per command; everything else lives here.

pub mod capture;
pub mod cipher;
pub mod format;
pub mod jobs;
pub mod replay;
mod sql_kind;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The proxy's traffic state: whether a capture runs, where it writes, and the jobs.
#[derive(Default)]
pub struct Traffic {
    /// Read (relaxed) by every session on every command: the only cost while no capture runs.
    capturing: AtomicBool,
    sink: RwLock<Option<Arc<capture::Sink>>>,
    pub jobs: jobs::Jobs,
}

impl Traffic {
    #[inline]
    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    fn sink(&self) -> Option<Arc<capture::Sink>> {
        self.sink.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_sink(&self, sink: Option<Arc<capture::Sink>>) {
        let on = sink.is_some();
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
        self.capturing.store(on, Ordering::Relaxed);
    }
}
