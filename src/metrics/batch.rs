//! Per-thread batching of the metrics counted on every query (the command's counter and
//! latency histogram, the backend's traffic bytes and the packet counters).
//!
//! Why: every session worker counts into the same series, so without batching each query
//! would pull those counters' cache lines from the other cores (up to nine atomic adds a
//! query). A worker instead keeps
//! its counts in plain memory and adds them to the shared series when it is about to sleep
//! or after [`FLUSH_EVERY`] queries, whichever comes first, so a scrape is never more than a
//! few queries behind. Threads that never asked for batching count directly.

use super::backend::CmdHandles;
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::Histogram;
use std::cell::RefCell;

/// Queries a busy thread keeps before it flushes anyway.
const FLUSH_EVERY: u32 = 64;

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// One command series' counts held on this thread.
struct Slot {
    id: u64,
    total: LocalIntCounter,
    duration: LocalHistogram,
    inbound_bytes: LocalIntCounter,
    outbound_bytes: LocalIntCounter,
    inbound_packets: LocalIntCounter,
    outbound_packets: LocalIntCounter,
}

impl Slot {
    fn count(&self, seconds: f64, (read, written): (u64, u64)) {
        self.total.inc();
        self.duration.observe(seconds);
        self.inbound_bytes.inc_by(read);
        self.outbound_bytes.inc_by(written);
        self.inbound_packets.inc();
        self.outbound_packets.inc();
    }

    fn flush(&self) {
        self.total.flush();
        self.duration.flush();
        self.inbound_bytes.flush();
        self.outbound_bytes.flush();
        self.inbound_packets.flush();
        self.outbound_packets.flush();
    }
}

#[derive(Default)]
struct Pending {
    /// Set by [`batch_on_this_thread`]; otherwise counts go straight to the shared series.
    batching: bool,
    slots: Vec<Slot>,
    /// Queries held.
    queries: u32,
    /// `query_time_since_conn_creation_seconds` of each registry counted into (one, outside
    /// tests), by registry id, held like the rest.
    age: Vec<(u64, LocalHistogram)>,
}

impl Pending {
    fn flush(&mut self) {
        if self.queries == 0 {
            return;
        }
        for slot in &self.slots {
            slot.flush();
        }
        for (_, age) in &self.age {
            age.flush();
        }
        self.queries = 0;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Makes this thread batch its query metrics. It must call [`flush`] before it sleeps (a
/// session worker does so from its runtime's park hook), or counts could wait indefinitely.
pub fn batch_on_this_thread() {
    PENDING.with(|p| p.borrow_mut().batching = true);
}

/// Adds what this thread holds to the shared series.
pub fn flush() {
    let _ = PENDING.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.flush();
        }
    });
}

/// Counts one relayed command: its series, its latency, the backend bytes read and written
/// since the last count, and one packet each way.
pub(super) fn count_query(handles: &CmdHandles, seconds: f64, traffic: (u64, u64)) {
    let held = PENDING.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return false;
        };
        if !p.batching {
            return false;
        }
        match p.slots.iter().find(|s| s.id == handles.id) {
            Some(slot) => slot.count(seconds, traffic),
            None => {
                let slot = Slot {
                    id: handles.id,
                    total: handles.total.local(),
                    duration: handles.duration.local(),
                    inbound_bytes: handles.inbound_bytes.local(),
                    outbound_bytes: handles.outbound_bytes.local(),
                    inbound_packets: handles.inbound_packets.local(),
                    outbound_packets: handles.outbound_packets.local(),
                };
                slot.count(seconds, traffic);
                p.slots.push(slot);
            }
        }
        p.queries += 1;
        if p.queries >= FLUSH_EVERY {
            p.flush();
        }
        true
    });
    // Not a batching thread, or one exiting whose batch is already gone.
    if held != Ok(true) {
        count_directly(handles, seconds, traffic);
    }
}

fn count_directly(handles: &CmdHandles, seconds: f64, (read, written): (u64, u64)) {
    handles.total.inc();
    handles.duration.observe(seconds);
    handles.inbound_bytes.inc_by(read);
    handles.outbound_bytes.inc_by(written);
    handles.inbound_packets.inc();
    handles.outbound_packets.inc();
}

/// Observes how long after its connection was created a query started (TiProxy's
/// `query_time_since_conn_creation_seconds`); batched with the query's own counts, and
/// flushed with them (a query is always counted right after).
pub(super) fn observe_query_age((registry, shared): &(u64, Histogram), seconds: f64) {
    let held = PENDING.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return false;
        };
        if !p.batching {
            return false;
        }
        match p.age.iter().find(|(id, _)| id == registry) {
            Some((_, local)) => local.observe(seconds),
            None => {
                let local = shared.local();
                local.observe(seconds);
                p.age.push((*registry, local));
            }
        }
        true
    });
    if held != Ok(true) {
        shared.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handles(m: &super::super::Metrics, cmd: &str) -> CmdHandles {
        let l = &["batch-test:1", cmd];
        let backend = &[cmd];
        CmdHandles::new(
            m.query_total.with_label_values(l),
            m.query_duration.with_label_values(l),
            [
                m.inbound_bytes.with_label_values(backend),
                m.outbound_bytes.with_label_values(backend),
                m.inbound_packets.with_label_values(backend),
                m.outbound_packets.with_label_values(backend),
            ],
        )
    }

    #[test]
    fn a_batching_thread_holds_counts_until_it_flushes_and_at_the_limit() {
        let m = super::super::Metrics::new();
        let h = handles(&m, "batch_flush");
        std::thread::spawn(move || {
            batch_on_this_thread();
            count_query(&h, 0.001, (100, 10));
            count_query(&h, 0.002, (50, 5));
            assert_eq!(h.total.get(), 0, "held on the thread until a flush");
            assert_eq!(h.inbound_bytes.get(), 0);
            flush();
            assert_eq!(h.total.get(), 2);
            assert_eq!(h.duration.get_sample_count(), 2);
            assert!((h.duration.get_sample_sum() - 0.003).abs() < 1e-9);
            assert_eq!((h.inbound_bytes.get(), h.outbound_bytes.get()), (150, 15));
            for _ in 0..FLUSH_EVERY {
                count_query(&h, 0.001, (0, 0));
            }
            assert_eq!(
                h.total.get(),
                2 + u64::from(FLUSH_EVERY),
                "a busy thread flushes without sleeping"
            );
            count_query(&h, 0.001, (1, 1));
        })
        .join()
        .unwrap();
        let h = handles(&m, "batch_flush");
        assert_eq!(h.inbound_bytes.get(), 151);
        assert_eq!(
            h.total.get(),
            3 + u64::from(FLUSH_EVERY),
            "what a thread holds when it ends is not lost"
        );
    }

    #[test]
    fn other_threads_count_at_once() {
        let m = super::super::Metrics::new();
        let h = handles(&m, "batch_direct");
        std::thread::spawn(move || {
            count_query(&h, 0.001, (7, 3));
            assert_eq!(h.total.get(), 1);
            assert_eq!((h.inbound_bytes.get(), h.outbound_bytes.get()), (7, 3));
        })
        .join()
        .unwrap();
    }
}
