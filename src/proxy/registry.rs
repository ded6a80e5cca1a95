//! The live sessions, for the HTTP API and the dashboard: who is connected, through which
//! backend, in what state. Updated at session start, backend choice and end, never per query.

use atomic_waker::AtomicWaker;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::SystemTime;

#[derive(Debug)]
pub struct SessionEntry {
    pub id: u64,
    pub client: SocketAddr,
    pub started: SystemTime,
    details: Mutex<Details>,
    in_transaction: AtomicBool,
    /// A command is running (set around each command, so the API can tell busy from idle).
    executing: AtomicBool,
    /// A move the control plane asked for and why the last one failed, both rare: boxed, so
    /// a session that is never moved holds a pointer for them.
    moves: Mutex<Option<Box<Moves>>>,
    /// Mirrors whether `moves` holds a redirect, so the per-command check takes no lock.
    redirect_pending: AtomicBool,
    /// The session must end (it outstayed failover-timeout on a failed backend).
    close: AtomicBool,
    /// Set with each request and consumed by the session's wait: a one-shot permit like
    /// `Notify`'s, but a wait costs two atomics instead of a lock to register and one to drop,
    /// and the session enters that wait between every two commands.
    signalled: AtomicBool,
    wake: AtomicWaker,
    /// The proxy port the client reached (0 until known), for port routing rules.
    local_port: AtomicU16,
}

#[derive(Debug, Default)]
struct Moves {
    /// The move asked for; the session acts on it at its next boundary.
    redirect: Option<Redirect>,
    /// Why the last attempt to move the session failed; cleared when a move succeeds.
    blocked: Option<String>,
}

impl Moves {
    /// Frees the box once it holds nothing.
    fn tidy(slot: &mut Option<Box<Moves>>) {
        if slot
            .as_ref()
            .is_some_and(|m| m.redirect.is_none() && m.blocked.is_none())
        {
            *slot = None;
        }
    }
}

/// A request to move a session to another backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The backend to move to; `None` lets the session pick the least loaded healthy one.
    pub target: Option<String>,
    /// Why, for logs and the migrate metric's `reason` label.
    pub reason: &'static str,
}

#[derive(Debug, Default, Clone)]
struct Details {
    user: String,
    backend: String,
}

/// A point-in-time copy of one session for display.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionView {
    pub id: u64,
    pub client: String,
    pub user: String,
    pub backend: String,
    /// "handshake", "executing", "idle" or "in-transaction" (idle inside a transaction).
    pub state: &'static str,
    pub age_seconds: f64,
    /// Why the session could not be moved the last time it was asked to (a temporary table,
    /// a lock, state that cannot be restored, no healthy backend...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_blocked: Option<String>,
}

impl SessionEntry {
    pub fn set_identity(&self, user: &str, backend: &str) {
        let mut d = self.details.lock().expect("session details");
        d.user = user.to_owned();
        d.backend = backend.to_owned();
    }

    /// Asks the session to move; a newer request replaces an older one.
    pub fn request_redirect(&self, r: Redirect) {
        self.moves
            .lock()
            .expect("moves")
            .get_or_insert_default()
            .redirect = Some(r);
        self.redirect_pending.store(true, Ordering::Release);
        self.signal();
    }

    pub fn request_close(&self) {
        self.close.store(true, Ordering::Relaxed);
        self.signal();
    }

    fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.wake.wake();
    }

    pub fn close_requested(&self) -> bool {
        self.close.load(Ordering::Relaxed)
    }

    pub fn take_redirect(&self) -> Option<Redirect> {
        let mut m = self.moves.lock().expect("moves");
        self.redirect_pending.store(false, Ordering::Release);
        let r = m.as_mut().and_then(|m| m.redirect.take());
        Moves::tidy(&mut m);
        r
    }

    /// The move asked for and not yet taken up, for the pending-migration gauge.
    pub fn pending_redirect(&self) -> Option<Redirect> {
        if !self.has_redirect() {
            return None;
        }
        self.moves
            .lock()
            .expect("moves")
            .as_ref()
            .and_then(|m| m.redirect.clone())
    }

    pub fn has_redirect(&self) -> bool {
        self.redirect_pending.load(Ordering::Acquire)
    }

    /// Completes when something was asked of the session (a move, a close, the proxy's
    /// shutdown) since the last wait completed; the session then looks at what it was.
    pub async fn attention(&self) {
        std::future::poll_fn(|cx| {
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.wake.register(cx.waker());
            // A request between the check and the registration woke no one: look again.
            if self.signalled.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    pub fn set_local_port(&self, port: u16) {
        self.local_port.store(port, Ordering::Relaxed);
    }

    /// Where the session came in, as routing rules see it.
    pub fn origin(&self) -> crate::balance::policy::Origin {
        crate::balance::policy::Origin {
            port: self.local_port.load(Ordering::Relaxed),
            client: Some(self.client.ip()),
        }
    }

    /// The backend the session is on ("" during the handshake).
    pub fn backend(&self) -> String {
        self.details
            .lock()
            .expect("session details")
            .backend
            .clone()
    }

    pub fn set_move_blocked(&self, why: Option<&str>) {
        let mut m = self.moves.lock().expect("moves");
        match why {
            Some(why) => m.get_or_insert_default().blocked = Some(why.to_owned()),
            None => {
                if let Some(m) = m.as_mut() {
                    m.blocked = None;
                }
                Moves::tidy(&mut m);
            }
        }
    }

    pub fn move_blocked(&self) -> Option<String> {
        self.moves
            .lock()
            .expect("moves")
            .as_ref()
            .and_then(|m| m.blocked.clone())
    }

    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    pub fn set_executing(&self, v: bool) {
        self.executing.store(v, Ordering::Relaxed);
    }

    pub fn set_in_transaction(&self, v: bool) {
        self.in_transaction.store(v, Ordering::Relaxed);
    }

    pub fn view(&self) -> SessionView {
        let d = self.details.lock().expect("session details").clone();
        let state = if d.backend.is_empty() {
            "handshake"
        } else if self.executing.load(Ordering::Relaxed) {
            "executing"
        } else if self.in_transaction.load(Ordering::Relaxed) {
            "in-transaction"
        } else {
            "idle"
        };
        SessionView {
            id: self.id,
            client: self.client.to_string(),
            user: d.user,
            backend: d.backend,
            state,
            age_seconds: self
                .started
                .elapsed()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            move_blocked: self.move_blocked(),
        }
    }
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u64, Arc<SessionEntry>>>,
}

impl Registry {
    /// Registers a session; it is removed when the returned handle drops.
    pub fn register(self: &Arc<Self>, id: u64, client: SocketAddr) -> RegisteredSession {
        let entry = Arc::new(SessionEntry {
            id,
            client,
            started: SystemTime::now(),
            details: Mutex::new(Details::default()),
            in_transaction: AtomicBool::new(false),
            executing: AtomicBool::new(false),
            moves: Mutex::new(None),
            redirect_pending: AtomicBool::new(false),
            close: AtomicBool::new(false),
            signalled: AtomicBool::new(false),
            wake: AtomicWaker::new(),
            local_port: AtomicU16::new(0),
        });
        self.sessions
            .lock()
            .expect("registry")
            .insert(id, entry.clone());
        RegisteredSession {
            registry: self.clone(),
            entry,
        }
    }

    /// Wakes every session to look at the proxy's state (shutdown phases).
    pub fn signal_all(&self) {
        for e in self.sessions.lock().expect("registry").values() {
            e.signal();
        }
    }

    /// The live sessions themselves, for the balancer.
    pub fn entries(&self) -> Vec<Arc<SessionEntry>> {
        self.sessions
            .lock()
            .expect("registry")
            .values()
            .cloned()
            .collect()
    }

    pub fn list(&self) -> Vec<SessionView> {
        let entries: Vec<Arc<SessionEntry>> = self
            .sessions
            .lock()
            .expect("registry")
            .values()
            .cloned()
            .collect();
        let mut views: Vec<SessionView> = entries.iter().map(|e| e.view()).collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// Sessions per backend address, as the sessions themselves report it: a backend
    /// removed from the configuration still shows the sessions it holds.
    pub fn sessions_by_backend(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for e in self.entries() {
            let backend = e.backend();
            if !backend.is_empty() {
                *counts.entry(backend).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Per backend, the sessions asked to move that have not, by what holds them: the reason
    /// their last attempt failed, or an open transaction (moves wait for its end).
    pub fn blocked_by_backend(&self) -> HashMap<String, BTreeMap<String, u64>> {
        let mut out: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for e in self.entries() {
            let backend = e.backend();
            if backend.is_empty() {
                continue;
            }
            let why = match e.move_blocked() {
                Some(why) => why,
                None if e.has_redirect() && e.in_transaction() => {
                    "waiting for its transaction to end".to_string()
                }
                None => continue,
            };
            *out.entry(backend).or_default().entry(why).or_insert(0) += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().expect("registry").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct RegisteredSession {
    registry: Arc<Registry>,
    pub entry: Arc<SessionEntry>,
}

impl Drop for RegisteredSession {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .expect("registry")
            .remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_appear_with_state_and_leave_on_drop() {
        let reg = Arc::new(Registry::default());
        let a = reg.register(1, "127.0.0.1:5000".parse().unwrap());
        let b = reg.register(2, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(reg.list()[0].state, "handshake");
        a.entry.set_identity("app", "127.0.0.1:3306");
        b.entry.set_identity("app", "127.0.0.1:3307");
        b.entry.set_in_transaction(true);
        let l = reg.list();
        assert_eq!((l[0].state, l[1].state), ("idle", "in-transaction"));
        assert_eq!(l[1].backend, "127.0.0.1:3307");
        a.entry.set_identity("app", "127.0.0.1:3307");
        assert_eq!(reg.sessions_by_backend().get("127.0.0.1:3307"), Some(&2));
        drop(a);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn blocked_sessions_are_counted_by_backend_and_cause() {
        let reg = Arc::new(Registry::default());
        let on = |id: u64| {
            let s = reg.register(id, "127.0.0.1:5000".parse().unwrap());
            s.entry.set_identity("app", "a:1");
            s
        };
        let (t1, t2, txn, free) = (on(1), on(2), on(3), on(4));
        t1.entry
            .set_move_blocked(Some("the session holds a temporary table"));
        t2.entry
            .set_move_blocked(Some("the session holds a temporary table"));
        txn.entry.set_in_transaction(true);
        txn.entry.request_redirect(Redirect {
            target: None,
            reason: "fail-backend-list",
        });
        free.entry.set_in_transaction(true);
        let blocked = reg.blocked_by_backend();
        let a = &blocked["a:1"];
        assert_eq!(a["the session holds a temporary table"], 2);
        assert_eq!(a["waiting for its transaction to end"], 1);
        assert_eq!(
            a.len(),
            2,
            "a transaction nobody asked to move blocks nothing"
        );
        t1.entry.set_move_blocked(None);
        assert_eq!(
            reg.blocked_by_backend()["a:1"]["the session holds a temporary table"],
            1
        );
    }
}
