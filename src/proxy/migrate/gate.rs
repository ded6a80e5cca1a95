//! What many moves at once share: a bound on how many run together (a drain of a thousand
//! idle sessions would otherwise open a thousand backend logins in the same instant and make
//! every one of them slow), and the stored password hashes the service account read lately, so
//! a batch of sessions of one user costs one `mysql.user` lookup instead of one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};
use zeroize::Zeroizing;

/// Moves running at once. Enough to keep both ends of the link busy (each move is a handful of
/// round trips, mostly waiting), few enough that a backend is not flooded with logins.
pub const MOVES_AT_ONCE: usize = 32;

/// How long a stored hash read through the service account serves further moves of the same
/// user through the same backend. Short: it only has to outlast one batch of moves.
pub const STORED_HASH_TTL: Duration = Duration::from_secs(5);

/// The `mysql_native_password` hashes (SHA1(SHA1(password))) of one user on one backend; wiped
/// when dropped.
pub type StoredHashes = Vec<Zeroizing<[u8; 20]>>;

/// Whose hashes: a backend address and a user name.
type LookupKey = (String, Vec<u8>);

#[derive(Default)]
struct Lookup {
    read_at: Option<Instant>,
    hashes: StoredHashes,
}

pub struct MoveGate {
    slots: Semaphore,
    /// One entry per (backend, user) read lately; the async lock makes concurrent moves of
    /// one user wait for the first one's lookup instead of each doing its own.
    lookups: Mutex<HashMap<LookupKey, Arc<tokio::sync::Mutex<Lookup>>>>,
}

impl Default for MoveGate {
    fn default() -> Self {
        Self::new(MOVES_AT_ONCE)
    }
}

impl MoveGate {
    pub fn new(at_once: usize) -> Self {
        Self {
            slots: Semaphore::new(at_once.max(1)),
            lookups: Mutex::default(),
        }
    }

    /// Waits for a free slot; the move runs while the permit lives.
    pub async fn slot(&self) -> SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the move gate is never closed")
    }

    /// The user's stored hashes on `backend`: the ones read within [`STORED_HASH_TTL`] when
    /// `fits` accepts one of them, else read again with `read` (a password changed since the
    /// last reading, or nothing cached). Only one reading per (backend, user) runs at a time.
    pub async fn stored_hashes<F, Fut, E>(
        &self,
        backend: &str,
        user: &[u8],
        fits: impl Fn(&StoredHashes) -> bool,
        read: F,
    ) -> Result<StoredHashes, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<StoredHashes, E>>,
    {
        let entry = {
            let mut map = self.lookups.lock().expect("stored hash cache");
            // Expired entries go when the next lookup passes by; nothing else holds them.
            map.retain(|_, l| {
                Arc::strong_count(l) > 1
                    || l.try_lock()
                        .is_ok_and(|l| l.read_at.is_some_and(|t| t.elapsed() < STORED_HASH_TTL))
            });
            map.entry((backend.to_owned(), user.to_vec()))
                .or_default()
                .clone()
        };
        let mut lookup = entry.lock().await;
        let fresh = lookup
            .read_at
            .is_some_and(|t| t.elapsed() < STORED_HASH_TTL);
        if fresh && fits(&lookup.hashes) {
            return Ok(lookup.hashes.clone());
        }
        let hashes = read().await?;
        lookup.read_at = Some(Instant::now());
        lookup.hashes = hashes.clone();
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn hashes(b: u8) -> StoredHashes {
        vec![Zeroizing::new([b; 20])]
    }

    /// Sessions of one user moving together read the stored hash once; another user, or a
    /// hash that no longer fits the session's login, is read again.
    #[tokio::test]
    async fn one_lookup_serves_a_batch_of_one_user() {
        let gate = Arc::new(MoveGate::new(4));
        let reads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (gate, reads) = (gate.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                gate.stored_hashes(
                    "b:1",
                    b"app",
                    |h| h[0][0] == 7,
                    || async {
                        reads.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok::<_, ()>(hashes(7))
                    },
                )
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap()[0][0], 7);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let read_again = |b| {
            let reads = reads.clone();
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(hashes(b))
            }
        };
        gate.stored_hashes("b:1", b"other", |_| true, read_again(1))
            .await
            .unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // The password changed: the cached hash does not fit, so it is read again.
        let got = gate
            .stored_hashes("b:1", b"app", |h| h[0][0] == 9, read_again(9))
            .await
            .unwrap();
        assert_eq!((got[0][0], reads.load(Ordering::SeqCst)), (9, 3));
        // Another backend may hold another password: its own lookup.
        gate.stored_hashes("c:1", b"app", |_| true, read_again(9))
            .await
            .unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }

    /// A failed reading is not cached: the next move tries again.
    #[tokio::test]
    async fn a_failed_lookup_is_not_remembered() {
        let gate = MoveGate::new(1);
        let r = gate
            .stored_hashes(
                "b:1",
                b"app",
                |_| true,
                || async { Err::<StoredHashes, _>("down") },
            )
            .await;
        assert_eq!(r.unwrap_err(), "down");
        let r = gate
            .stored_hashes(
                "b:1",
                b"app",
                |_| true,
                || async { Ok::<_, &str>(hashes(3)) },
            )
            .await;
        assert_eq!(r.unwrap()[0][0], 3);
    }

    /// No more than the bound run at once.
    #[tokio::test]
    async fn slots_bound_the_moves_running_together() {
        let gate = MoveGate::new(2);
        let a = gate.slot().await;
        let _b = gate.slot().await;
        assert!(gate.slots.try_acquire().is_err());
        drop(a);
        assert!(gate.slots.try_acquire().is_ok());
    }
}
