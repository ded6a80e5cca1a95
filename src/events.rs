//! Recent operational events (backend up/down, config changes, later migrations) in a small
//! bounded ring, for `/api/events` and the dashboard. Pushed rarely, never per query. Each
//! proxy owns its log (`ProxyContext::events`); there is no process-wide one.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// How many events are kept; older ones fall off.
pub const CAPACITY: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event, so a poller can tell what it has not seen yet.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// "backend-up", "backend-down", "config", ...
    pub kind: &'static str,
    pub message: String,
}

pub struct EventLog {
    inner: Mutex<(u64, VecDeque<Event>)>,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((0, VecDeque::with_capacity(capacity))),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&self, kind: &'static str, message: impl Into<String>) {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut g = self.inner.lock().expect("event log");
        g.0 += 1;
        let seq = g.0;
        if g.1.len() == self.capacity {
            g.1.pop_front();
        }
        g.1.push_back(Event {
            seq,
            time_ms,
            kind,
            message: message.into(),
        });
    }

    /// The kept events, newest first.
    pub fn recent(&self) -> Vec<Event> {
        self.inner
            .lock()
            .expect("event log")
            .1
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_capacity() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.push("config", format!("change {i}"));
        }
        let r = log.recent();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].message, "change 4");
        assert_eq!(r[0].seq, 5);
        assert_eq!(r[2].message, "change 2");
    }
}
