//! A cap on open status-port connections. When it is reached, the oldest connection that is
//! not serving a request (idle, or still sending its headers) is closed to make room, so a
//! client holding many half-sent requests cannot keep health checks and metrics out; a new
//! connection is refused only when every slot is serving a request. A slot is freed only when
//! its connection's socket is closed, so the cap bounds file descriptors, not just bookkeeping.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a new connection waits for an evicted one to close before it is refused.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// Status-port connections open at once; each costs a file descriptor and a task.
pub const MAX_CONNECTIONS: usize = 256;

pub struct Slots {
    limit: usize,
    inner: Mutex<Inner>,
    /// Signalled each time a ticket is dropped, that is, a socket closed.
    freed: Notify,
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
        self.slots.freed.notify_one();
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
            freed: Notify::new(),
        })
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.inner.lock().expect("slots").open.len()
    }

    /// A slot for a new connection. When all are taken, the oldest idle connection is told to
    /// close and the caller waits (up to `EVICTION_WAIT`) for its socket to go; None when every
    /// open connection is serving a request or nothing closed in time.
    pub async fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
        loop {
            match self.try_admit() {
                Admit::Admitted(t) => return Some(t),
                Admit::Full => return None,
                Admit::Evicting => {
                    crate::timer::timeout_at(deadline, self.freed.notified())
                        .await
                        .ok()?;
                }
            }
        }
    }

    fn try_admit(self: &Arc<Self>) -> Admit {
        let mut inner = self.inner.lock().expect("slots");
        if inner.open.len() >= self.limit {
            // One eviction at a time is enough: the caller waits for it before trying again.
            if inner.open.values().any(|s| s.evict.is_cancelled()) {
                return Admit::Evicting;
            }
            let idle = inner
                .open
                .values()
                .find(|s| s.in_flight.load(Ordering::Acquire) == 0);
            return match idle {
                Some(s) => {
                    s.evict.cancel();
                    Admit::Evicting
                }
                None => Admit::Full,
            };
        }
        let id = inner.next;
        inner.next += 1;
        let slot = Slot {
            in_flight: Arc::new(AtomicUsize::new(0)),
            evict: CancellationToken::new(),
        };
        inner.open.insert(id, slot.clone());
        Admit::Admitted(Ticket {
            id,
            slots: self.clone(),
            in_flight: slot.in_flight,
            evicted: slot.evict,
        })
    }
}

enum Admit {
    Admitted(Ticket),
    /// An idle connection was told to close; its slot frees when its socket does.
    Evicting,
    /// Every slot is serving a request.
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room() {
        let s = Slots::new(2);
        let a = s.admit().await.unwrap();
        let b = s.admit().await.unwrap();
        let busy = Busy::new(&a.in_flight);
        let b_evicted = b.evicted.clone();
        // b's connection closes once it is told to, as the server's task does.
        let closer = tokio::spawn(async move {
            b.evicted.cancelled().await;
            drop(b);
        });
        let c = s.admit().await.unwrap();
        closer.await.unwrap();
        assert!(!a.evicted.is_cancelled(), "a is serving a request");
        assert!(b_evicted.is_cancelled(), "b was the oldest idle one");
        assert_eq!(
            s.open(),
            2,
            "the cap holds: b's slot was reused only after it closed"
        );
        let _busy_c = Busy::new(&c.in_flight);
        assert!(s.admit().await.is_none(), "all slots serving: refused");
        drop(busy);
        // a is now idle and is told to close, but never does: the newcomer is refused in time
        // rather than pushing the count over the cap.
        assert!(s.admit().await.is_none());
        assert!(a.evicted.is_cancelled());
        assert_eq!(s.open(), 2);
        drop(a);
        let d = s.admit().await.unwrap();
        drop((c, d));
        assert_eq!(s.open(), 0);
    }
}
