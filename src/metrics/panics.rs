//! Counts panics as `tiproxy_server_err{type="panic"}` and logs them through the proxy's own
//! log, so a bug that ends a session's task shows on the dashboard and in the log file instead
//! of only on stderr.

use std::sync::Once;

/// The `type` label panics are counted under (TiProxy's name for them).
pub const PANIC: &str = "panic";

/// Installs the panic hook once per process; the hook that was there still runs after it.
pub fn count_and_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            super::get().server_err.with_label_values(&[PANIC]).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_counted() {
        count_and_log();
        let counter = super::super::get().server_err.with_label_values(&[PANIC]);
        let before = counter.get();
        let joined = std::thread::spawn(|| panic!("deliberate, to be counted")).join();
        assert!(joined.is_err());
        assert!(counter.get() > before, "the panic was not counted");
    }
}
