//! Counts panics as `tiproxy_server_err{type="panic"}` and logs them through the proxy's own
//! log, so a bug that ends a session's task shows on the dashboard and in the log file instead
//! of only on stderr. A panic hook is process-wide while registries belong to Apps, so the
//! hook counts into one process counter and each registry catches up when it is rendered.

use super::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Panics seen by the hook since the process started.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// The `type` label panics are counted under (TiProxy's name for them).
pub const PANIC: &str = "panic";

/// Installs the panic hook once per process; the hook that was there still runs after it.
pub fn count_and_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            tracing::error!(
                %thread,
                %at,
                %message,
                "internal error: a panic ended what this thread or task was doing (a session running there is closed); please report it with this line"
            );
            previous(info);
        }));
    });
}

impl Metrics {
    /// Adds the panics the hook counted since this registry last looked.
    pub(super) fn catch_up_panics(&self) {
        let seen = PANICS.load(Ordering::Relaxed);
        let counted = self.panics_counted.swap(seen, Ordering::AcqRel);
        if seen > counted {
            self.server_err
                .with_label_values(&[PANIC])
                .inc_by(seen - counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_counted() {
        count_and_log();
        let m = Metrics::new();
        m.render();
        let counter = m.server_err.with_label_values(&[PANIC]);
        let before = counter.get();
        let joined = std::thread::spawn(|| panic!("deliberate, to be counted")).join();
        assert!(joined.is_err());
        m.render();
        assert!(counter.get() > before, "the panic was not counted");
    }
}
