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
use prometheus::local::LocalHistogram;
use prometheus::{Histogram, IntCounter};
use std::cell::RefCell;

/// Queries a busy thread keeps before it flushes anyway.
const FLUSH_EVERY: u32 = 64;

/// Samples a held histogram keeps as they are: a flush observes them one by one. At low load a
/// worker flushes after every query or two, and observing one sample costs a fraction of
/// walking every bucket of a local histogram.
const FEW: usize = 4;

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// Observations of one histogram held on this thread: the first few as they are, the rest
/// (a busy thread) summed per bucket.
struct HeldHistogram {
    shared: Histogram,
    few: [f64; FEW],
    held: usize,
    many: Option<LocalHistogram>,
}

impl HeldHistogram {
    fn new(shared: Histogram) -> Self {
        Self {
            shared,
            few: [0.0; FEW],
            held: 0,
            many: None,
        }
    }

    #[inline]
    fn observe(&mut self, v: f64) {
        if self.held < FEW {
            self.few[self.held] = v;
            self.held += 1;
        } else {
            let shared = &self.shared;
            self.many.get_or_insert_with(|| shared.local()).observe(v);
        }
    }

    fn flush(&mut self) {
        for &v in &self.few[..self.held] {
            self.shared.observe(v);
        }
        self.held = 0;
        if let Some(many) = &self.many {
            many.flush();
        }
    }
}

/// Adds `n` to a shared counter unless it is zero, and zeroes it.
fn add(counter: &IntCounter, n: &mut u64) {
    if *n > 0 {
        counter.inc_by(std::mem::take(n));
    }
}

/// One command series' counts held on this thread.
struct Slot {
    id: u64,
    total: IntCounter,
    inbound_bytes: IntCounter,
    outbound_bytes: IntCounter,
    inbound_packets: IntCounter,
    outbound_packets: IntCounter,
    duration: HeldHistogram,
    /// Queries counted since the last flush: the series' total and one packet each way apiece.
    queries: u64,
    read: u64,
    written: u64,
}

impl Slot {
    fn new(handles: &CmdHandles) -> Self {
        Self {
            id: handles.id,
            total: handles.total.clone(),
            inbound_bytes: handles.inbound_bytes.clone(),
            outbound_bytes: handles.outbound_bytes.clone(),
            inbound_packets: handles.inbound_packets.clone(),
            outbound_packets: handles.outbound_packets.clone(),
            duration: HeldHistogram::new(handles.duration.clone()),
            queries: 0,
            read: 0,
            written: 0,
        }
    }

    #[inline]
    fn count(&mut self, seconds: f64, (read, written): (u64, u64)) {
        self.queries += 1;
        self.read += read;
        self.written += written;
        self.duration.observe(seconds);
    }

    fn flush(&mut self) {
        if self.queries == 0 {
            return;
        }
        let queries = self.queries;
        add(&self.total, &mut self.queries);
        self.inbound_packets.inc_by(queries);
        self.outbound_packets.inc_by(queries);
        add(&self.inbound_bytes, &mut self.read);
        add(&self.outbound_bytes, &mut self.written);
        self.duration.flush();
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
    age: Vec<(u64, HeldHistogram)>,
}

impl Pending {
    fn flush(&mut self) {
        if self.queries == 0 {
            return;
        }
        for slot in &mut self.slots {
            slot.flush();
        }
        for (_, age) in &mut self.age {
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
        match p.slots.iter_mut().find(|s| s.id == handles.id) {
            Some(slot) => slot.count(seconds, traffic),
            None => {
                let mut slot = Slot::new(handles);
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
        match p.age.iter_mut().find(|(id, _)| id == registry) {
            Some((_, held)) => held.observe(seconds),
            None => {
                let mut held = HeldHistogram::new(shared.clone());
                held.observe(seconds);
                p.age.push((*registry, held));
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
            assert_eq!(
                h.duration.get_sample_count(),
                2 + u64::from(FLUSH_EVERY),
                "latencies held past the few kept as they are are flushed too"
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
