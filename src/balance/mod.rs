//! Routing: the set of known backends with their health and session counts, which one a new
//! session goes to, and the seams between the control plane and the rest: the balancing
//! policy ([`policy`], pure), the load figures it scores ([`factors`]), the handle through
//! which sessions are asked to move ([`SessionHandle`]) and what a discovery source reports
//! ([`SourceStatus`]). Testable without a network; writes no metrics of its own choosing.

pub mod backend;
pub mod factors;
pub mod label_routes;
pub mod policy;
pub mod routes;
pub mod routes_namespace;

pub use backend::{Backend, BackendLease, BackendSource, BackendSpec};

use factors::Load;
use policy::{BackendInput, Policy};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// What the data plane asks of the control plane when a session needs a backend.
pub trait BackendSelector: Send + Sync {
    /// The best healthy backend by the policy's scores, skipping `exclude` (already tried).
    fn select(&self, exclude: &[Arc<Backend>]) -> Option<Arc<Backend>>;
    /// Like `select`, for a session from `origin`: only backends its routing rule allows.
    fn select_for(
        &self,
        exclude: &[Arc<Backend>],
        _origin: &policy::Origin,
    ) -> Option<Arc<Backend>> {
        self.select(exclude)
    }
    /// Why `select` found nothing, for the client's error and the logs.
    fn unavailable_reason(&self) -> String;
    /// Why `select_for` found nothing for a session from `origin`.
    fn unavailable_reason_for(&self, _origin: &policy::Origin) -> String {
        self.unavailable_reason()
    }
}

/// What the control plane asks of a live session; the data plane implements it.
pub trait SessionHandle: Send + Sync {
    fn id(&self) -> u64;
    /// The backend address the session is on ("" during the handshake).
    fn backend(&self) -> String;
    fn in_txn(&self) -> bool;
    /// A move was asked for and the session has not acted on it yet.
    fn redirect_pending(&self) -> bool;
    /// Move at the next transaction boundary; `to: None` picks the best backend then.
    fn redirect(&self, to: Option<String>, reason: &'static str);
    /// End the session.
    fn close(&self);
    /// Where the session came in, for routing rules.
    fn origin(&self) -> policy::Origin {
        policy::Origin::default()
    }
}

/// A discovery source's own state, so routing can say when it is why nothing is available.
pub trait SourceStatus: Send + Sync {
    fn is_reachable(&self) -> bool;
    /// Why the source is unreachable, when it is.
    fn unreachable_summary(&self) -> Option<String>;
}

/// What new-session routing scores with: the policy and each backend's last load figures,
/// replaced as a whole by the balancing driver.
#[derive(Debug, Clone, Default)]
pub struct RouteView {
    pub policy: Policy,
    pub loads: HashMap<String, Load>,
    /// Each available backend's score per factor that counted last round, for reports.
    pub scores: HashMap<String, BTreeMap<&'static str, u32>>,
}

/// The backends the proxy knows: the union of what each source (static config, PD) last said.
/// Each source replaces only its own part, so a config reload never drops discovered TiDBs
/// and a PD update never drops static backends.
#[derive(Default)]
pub struct BackendSet {
    /// The Prometheus PD's topology names (`host:port`), for the load figures.
    prometheus: RwLock<Option<String>>,
    list: RwLock<Arc<Vec<Arc<Backend>>>>,
    parts: Mutex<BTreeMap<BackendSource, Vec<BackendSpec>>>,
    pd: OnceLock<Arc<dyn SourceStatus>>,
    route: RwLock<Arc<RouteView>>,
    /// Where each backend's series are made; the App's registry.
    metrics: Arc<crate::metrics::Metrics>,
}

impl BackendSet {
    pub fn new(addrs: &[String]) -> Self {
        let set = Self::default();
        set.set_addrs(addrs);
        set
    }

    /// Replaces the static backends; backends already known keep their state and sessions.
    pub fn set_addrs(&self, addrs: &[String]) {
        let specs: Vec<BackendSpec> = addrs.iter().map(BackendSpec::new_static).collect();
        self.set_source(BackendSource::Static, specs);
    }

    /// Replaces what one source says; the other sources' backends stay.
    pub fn set_source(&self, source: BackendSource, specs: Vec<BackendSpec>) {
        let mut parts = self.parts.lock().expect("backend parts lock");
        parts.insert(source, specs);
        // Static first so ties in session count go to configured backends; a TiDB listed both
        // statically and in PD appears once, with PD's status port and labels.
        let mut union: Vec<BackendSpec> = Vec::new();
        for spec in parts.values().flatten() {
            match union.iter_mut().find(|s| s.addr == spec.addr) {
                Some(s) if spec.source == BackendSource::Pd => *s = spec.clone(),
                Some(_) => {}
                None => union.push(spec.clone()),
            }
        }
        self.set_specs(&union);
    }

    /// Replaces the whole list from specs; backends already known (by address) keep their
    /// health, sessions and greeting, and take the spec's source, status address and labels.
    pub fn set_specs(&self, specs: &[BackendSpec]) {
        let mut guard = self.list.write().expect("backend list lock");
        let old = guard.clone();
        let mut next: Vec<Arc<Backend>> = Vec::with_capacity(specs.len());
        for spec in specs {
            if next.iter().any(|b| b.addr == spec.addr) {
                continue;
            }
            let b = match old.iter().find(|b| b.addr == spec.addr) {
                Some(b) => {
                    b.update_meta(spec);
                    b.clone()
                }
                None => Arc::new(Backend::from_spec(spec.clone(), &self.metrics)),
            };
            next.push(b);
        }
        *guard = Arc::new(next);
    }

    /// The registry the backends' series are in (one per set, so per App).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Lets `unavailable_reason` say when PD being unreachable is why nothing is available.
    pub fn attach_pd_status(&self, status: Arc<dyn SourceStatus>) {
        let _ = self.pd.set(status);
    }

    pub fn pd_status(&self) -> Option<&Arc<dyn SourceStatus>> {
        self.pd.get()
    }

    /// Replaces what new-session routing scores with.
    /// What PD's topology says about Prometheus: its address, or `None` when it names none.
    pub fn set_prometheus(&self, addr: Option<String>) {
        *self.prometheus.write().expect("prometheus lock") = addr;
    }

    pub fn prometheus(&self) -> Option<String> {
        self.prometheus.read().expect("prometheus lock").clone()
    }

    pub fn set_route_view(&self, view: RouteView) {
        *self.route.write().expect("route view lock") = Arc::new(view);
    }

    /// Replaces the policy new-session routing uses, keeping the last load figures and scores.
    pub fn set_route_policy(&self, policy: Policy) {
        let policy = label_routes::effective(&policy, &self.snapshot());
        let mut guard = self.route.write().expect("route view lock");
        let mut next = RouteView::clone(&guard);
        next.policy = policy;
        *guard = Arc::new(next);
    }

    pub fn route_view(&self) -> Arc<RouteView> {
        self.route.read().expect("route view lock").clone()
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.list.read().expect("backend list lock").clone()
    }
}

/// A backend as the policy sees it, with its last load figures.
pub fn backend_input(b: &Backend, load: Load, fail_listed: bool) -> BackendInput {
    BackendInput {
        addr: b.addr.clone(),
        healthy: b.is_healthy(),
        fail_listed,
        sessions: b.sessions(),
        labels: b.labels(),
        load,
    }
}

/// The backend the policy picks among the healthy ones not in `exclude`; with no labels and no
/// load figures that is the one with the fewest sessions, ties to the earliest in the list.
pub fn pick(
    list: &[Arc<Backend>],
    exclude: &[Arc<Backend>],
    view: &RouteView,
) -> Option<Arc<Backend>> {
    pick_for(list, exclude, view, &policy::Origin::default())
}

/// Like [`pick`], within the backends the routing rule for `origin` allows.
pub fn pick_for(
    list: &[Arc<Backend>],
    exclude: &[Arc<Backend>],
    view: &RouteView,
    origin: &policy::Origin,
) -> Option<Arc<Backend>> {
    let cands: Vec<&Arc<Backend>> = list
        .iter()
        .filter(|b| b.is_healthy() && !exclude.iter().any(|e| Arc::ptr_eq(e, b)))
        .collect();
    let inputs: Vec<BackendInput> = cands
        .iter()
        .map(|b| {
            backend_input(
                b,
                view.loads.get(&b.addr).copied().unwrap_or_default(),
                false,
            )
        })
        .collect();
    let refs: Vec<&BackendInput> = inputs.iter().collect();
    let roll = if view.policy.routing == policy::Routing::Random {
        rand::random::<u64>()
    } else {
        0
    };
    policy::choose_for(&refs, &view.policy, roll, origin).map(|i| cands[i].clone())
}

impl BackendSelector for BackendSet {
    fn select(&self, exclude: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        pick(&self.snapshot(), exclude, &self.route_view())
    }

    fn select_for(
        &self,
        exclude: &[Arc<Backend>],
        origin: &policy::Origin,
    ) -> Option<Arc<Backend>> {
        pick_for(&self.snapshot(), exclude, &self.route_view(), origin)
    }

    fn unavailable_reason_for(&self, origin: &policy::Origin) -> String {
        let view = self.route_view();
        let Some(rule) = policy::route_for(&view.policy, origin) else {
            return self.unavailable_reason();
        };
        // Other backends may be healthy: say only what is true of the rule's own.
        let list = self.snapshot();
        let states: Vec<String> = rule
            .backends
            .iter()
            .map(|addr| match list.iter().find(|b| &b.addr == addr) {
                Some(b) if b.is_healthy() => format!("{addr} (not taking new sessions)"),
                Some(b) => format!("{addr} ({})", b.last_error_or("unhealthy")),
                None => format!("{addr} (not a known backend)"),
            })
            .collect();
        format!(
            "routing rule {:?} allows only its own backends and none of them is available: {}",
            rule.name,
            states.join(", ")
        )
    }

    fn unavailable_reason(&self) -> String {
        let list = self.snapshot();
        let pd_down = self.pd.get().and_then(|p| p.unreachable_summary());
        if list.is_empty() {
            return match pd_down {
                Some(pd) => format!("no TiDB is known yet because {pd}"),
                None => "no backend is configured or discovered".into(),
            };
        }
        let downs: Vec<String> = list
            .iter()
            .map(|b| format!("{} ({})", b.addr, b.last_error_or("unhealthy")))
            .collect();
        let mut reason = format!(
            "all {} backends are unhealthy: {}",
            list.len(),
            downs.join(", ")
        );
        if let Some(pd) = pd_down {
            reason.push_str(&format!("; the TiDB list may be stale because {pd}"));
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeSource(Mutex<Option<String>>);

    impl SourceStatus for FakeSource {
        fn is_reachable(&self) -> bool {
            self.0.lock().unwrap().is_none()
        }
        fn unreachable_summary(&self) -> Option<String> {
            self.0.lock().unwrap().clone()
        }
    }

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

    fn pd_spec(addr: &str, status: &str) -> BackendSpec {
        BackendSpec {
            addr: addr.into(),
            source: BackendSource::Pd,
            status_addr: Some(status.into()),
            labels: [("zone".to_string(), "z1".to_string())].into(),
        }
    }

    #[test]
    fn static_and_pd_backends_form_a_union() {
        let set = BackendSet::new(&addrs(&["s:1", "t:1"]));
        let s = set.snapshot()[0].clone();
        s.mark_unhealthy("down");
        set.set_source(
            BackendSource::Pd,
            vec![pd_spec("p:1", "p:10080"), pd_spec("t:1", "t:10080")],
        );
        let list = set.snapshot();
        let names: Vec<_> = list.iter().map(|b| b.addr.as_str()).collect();
        assert_eq!(names, ["s:1", "t:1", "p:1"]);
        assert!(Arc::ptr_eq(&list[0], &s) && !list[0].is_healthy());
        assert_eq!(
            list[1].source(),
            BackendSource::Pd,
            "PD knows the status port"
        );
        assert_eq!(list[2].status_addr().as_deref(), Some("p:10080"));
        assert_eq!(list[2].labels().get("zone").map(String::as_str), Some("z1"));
        // A static reload keeps discovered TiDBs; PD forgetting a TiDB keeps static ones.
        set.set_addrs(&addrs(&["s:1"]));
        assert_eq!(set.snapshot().len(), 3);
        set.set_source(BackendSource::Pd, vec![]);
        let names: Vec<_> = set.snapshot().iter().map(|b| b.addr.clone()).collect();
        assert_eq!(names, ["s:1"]);
        assert_eq!(BackendSource::Pd.as_str(), "pd");
    }

    #[test]
    fn specs_update_metadata_but_keep_state() {
        let set = BackendSet::default();
        set.set_specs(&[pd_spec("p:1", "p:10080")]);
        let p = set.snapshot()[0].clone();
        let _lease = BackendLease::new(p.clone());
        set.set_specs(&[pd_spec("p:1", "p:10081")]);
        let now = set.snapshot()[0].clone();
        assert!(Arc::ptr_eq(&now, &p));
        assert_eq!(now.sessions(), 1);
        assert_eq!(now.status_addr().as_deref(), Some("p:10081"));
    }

    #[test]
    fn routing_keeps_sessions_in_the_proxy_label_until_none_is_healthy() {
        let set = BackendSet::default();
        let spec = |addr: &str, zone: &str| BackendSpec {
            labels: [("zone".to_string(), zone.to_string())].into(),
            ..pd_spec(addr, "s:1")
        };
        set.set_specs(&[spec("far:1", "z2"), spec("near:1", "z1")]);
        set.set_route_view(RouteView {
            policy: Policy {
                label_name: "zone".into(),
                own_labels: [("zone".to_string(), "z1".to_string())].into(),
                ..Policy::default()
            },
            ..RouteView::default()
        });
        let list = set.snapshot();
        let _busy: Vec<_> = (0..5).map(|_| BackendLease::new(list[1].clone())).collect();
        assert_eq!(set.select(&[]).unwrap().addr, "near:1");
        list[1].mark_unhealthy("down");
        assert_eq!(set.select(&[]).unwrap().addr, "far:1");
        assert!(set.select(&[list[0].clone()]).is_none());
    }

    #[test]
    fn pd_outage_is_named_when_nothing_is_available() {
        let set = BackendSet::default();
        let pd = Arc::new(FakeSource::default());
        set.attach_pd_status(pd.clone());
        assert!(set.unavailable_reason().contains("no backend"));
        *pd.0.lock().unwrap() = Some("PD at 127.0.0.1:1: connection refused".into());
        let r = set.unavailable_reason();
        assert!(r.contains("PD") && r.contains("connection refused"), "{r}");
        set.set_addrs(&addrs(&["a:1"]));
        set.snapshot()[0].mark_unhealthy("refused");
        assert!(set.unavailable_reason().contains("PD"));
        *pd.0.lock().unwrap() = None;
        assert!(!set.unavailable_reason().contains("PD"));
    }
}
