//! Pure routing decisions: the set of known backends with their health and session counts,
//! and which one a new session goes to. Testable without a network.

pub mod backend;

pub use backend::{Backend, BackendLease};

use std::sync::{Arc, RwLock};

/// What the data plane asks of the control plane when a session needs a backend.
pub trait BackendSelector: Send + Sync {
    /// The healthy backend with the fewest sessions, skipping `exclude` (already tried).
    fn select(&self, exclude: &[Arc<Backend>]) -> Option<Arc<Backend>>;
    /// Why `select` found nothing, for the client's error and the logs.
    fn unavailable_reason(&self) -> String;
}

/// The backends the proxy knows, replaced as a whole when discovery or config changes.
#[derive(Default)]
pub struct BackendSet {
    list: RwLock<Arc<Vec<Arc<Backend>>>>,
}

impl BackendSet {
    pub fn new(addrs: &[String]) -> Self {
        let set = Self::default();
        set.set_addrs(addrs);
        set
    }

    /// Replaces the list; backends already known keep their state and sessions.
    pub fn set_addrs(&self, addrs: &[String]) {
        let mut guard = self.list.write().expect("backend list lock");
        let old = guard.clone();
        let mut next = Vec::with_capacity(addrs.len());
        for a in addrs {
            if next.iter().any(|b: &Arc<Backend>| &b.addr == a) {
                continue;
            }
            let b = old
                .iter()
                .find(|b| &b.addr == a)
                .cloned()
                .unwrap_or_else(|| Arc::new(Backend::new(a.clone())));
            next.push(b);
        }
        *guard = Arc::new(next);
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.list.read().expect("backend list lock").clone()
    }
}

/// The healthy backend with the fewest sessions; ties go to the earliest in the list.
pub fn least_sessions(list: &[Arc<Backend>], exclude: &[Arc<Backend>]) -> Option<Arc<Backend>> {
    list.iter()
        .filter(|b| b.is_healthy() && !exclude.iter().any(|e| Arc::ptr_eq(e, b)))
        .min_by_key(|b| b.sessions())
        .cloned()
}

impl BackendSelector for BackendSet {
    fn select(&self, exclude: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        least_sessions(&self.snapshot(), exclude)
    }

    fn unavailable_reason(&self) -> String {
        let list = self.snapshot();
        if list.is_empty() {
            return "no backend is configured or discovered".into();
        }
        let downs: Vec<String> = list
            .iter()
            .map(|b| format!("{} ({})", b.addr, b.last_error_or("unhealthy")))
            .collect();
        format!(
            "all {} backends are unhealthy: {}",
            list.len(),
            downs.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fewest_sessions_wins_and_unhealthy_are_skipped() {
        let set = BackendSet::new(&addrs(&["a:1", "b:1", "c:1"]));
        let list = set.snapshot();
        let _l1 = BackendLease::new(list[0].clone());
        let _l2 = BackendLease::new(list[1].clone());
        assert_eq!(set.select(&[]).unwrap().addr, "c:1");
        list[2].mark_unhealthy("refused");
        let picked = set.select(&[]).unwrap();
        assert!(picked.addr == "a:1" || picked.addr == "b:1");
        assert_eq!(set.select(&[list[0].clone()]).unwrap().addr, "b:1");
    }

    #[test]
    fn leases_balance_a_stream_of_sessions() {
        let set = BackendSet::new(&addrs(&["a:1", "b:1"]));
        let leases: Vec<_> = (0..6)
            .map(|_| BackendLease::new(set.select(&[]).unwrap()))
            .collect();
        let list = set.snapshot();
        assert_eq!(list[0].sessions(), 3);
        assert_eq!(list[1].sessions(), 3);
        drop(leases);
        assert_eq!(list[0].sessions(), 0);
    }

    #[test]
    fn nothing_healthy_explains_why() {
        let set = BackendSet::new(&addrs(&["a:1"]));
        set.snapshot()[0].mark_unhealthy("connection refused");
        assert!(set.select(&[]).is_none());
        assert!(set
            .unavailable_reason()
            .contains("a:1 (connection refused)"));
        let empty = BackendSet::new(&[]);
        assert!(empty.unavailable_reason().contains("no backend"));
    }

    #[test]
    fn replacing_the_list_keeps_state_of_known_backends() {
        let set = BackendSet::new(&addrs(&["a:1", "b:1"]));
        let a = set.snapshot()[0].clone();
        let _lease = BackendLease::new(a.clone());
        set.set_addrs(&addrs(&["b:1", "a:1", "a:1"]));
        let list = set.snapshot();
        assert_eq!(list.len(), 2);
        assert!(Arc::ptr_eq(&list[1], &a));
        assert_eq!(list[1].sessions(), 1);
    }
}
