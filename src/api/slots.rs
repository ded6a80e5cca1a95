//! A cap on open status-port connections. When it is reached, the oldest connection that is
//! not serving a request (idle, or still sending its headers) is closed to make room, so a
//! client holding many half-sent requests cannot keep health checks and metrics out; a new
//! connection is refused only when every slot is serving a request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Status-port connections open at once; each costs a file descriptor and a task.
pub const MAX_CONNECTIONS: usize = 256;

pub struct Slots {
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// By age: the first entry is the oldest.
    open: BTreeMap<u64, Slot>,
}

#[derive(Clone)]
struct Slot {
    in_flight: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// One admitted connection. `evicted` fires when it must close to make room; dropping the
/// ticket frees the slot.
pub struct Ticket {
    id: u64,
    slots: Arc<Slots>,
    pub in_flight: Arc<AtomicUsize>,
    pub evicted: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots
            .inner
            .lock()
            .expect("slots")
            .open
            .remove(&self.id);
    }
}

/// Marks a request in progress on its connection for as long as it lives.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub fn new(in_flight: &Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(in_flight.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Slots {
            limit,
            inner: Mutex::default(),
        })
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.inner.lock().expect("slots").open.len()
    }

    /// A slot for a new connection, closing the oldest idle one if all are taken; None when
    /// every open connection is serving a request.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut inner = self.inner.lock().expect("slots");
        if inner.open.len() >= self.limit {
            let idle = inner
                .open
                .iter()
                .find(|(_, s)| s.in_flight.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(s) = inner.open.remove(&idle) {
                s.evict.cancel();
            }
        }
        let id = inner.next;
        inner.next += 1;
        let slot = Slot {
            in_flight: Arc::new(AtomicUsize::new(0)),
            evict: CancellationToken::new(),
        };
        inner.open.insert(id, slot.clone());
        Some(Ticket {
            id,
            slots: self.clone(),
            in_flight: slot.in_flight,
            evicted: slot.evict,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let s = Slots::new(2);
        let a = s.admit().unwrap();
        let b = s.admit().unwrap();
        let busy = Busy::new(&a.in_flight);
        let c = s.admit().unwrap();
        assert!(!a.evicted.is_cancelled(), "a is serving a request");
        assert!(b.evicted.is_cancelled(), "b was the oldest idle one");
        let _busy_c = Busy::new(&c.in_flight);
        assert!(s.admit().is_none(), "all slots serving: refused");
        drop(busy);
        let d = s.admit().unwrap();
        assert!(a.evicted.is_cancelled());
        drop((b, d));
        assert_eq!(s.open(), 1);
    }
}
