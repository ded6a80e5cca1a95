//! The balancing driver: once a second it gathers the backends, their load figures (read from
//! each TiDB's status-port `/metrics` every few seconds) and the live sessions, asks the pure
//! policy in `balance::policy` what to do, and signals sessions through their handles. It
//! also hands new-session routing the policy and figures, and publishes the factor scores and
//! cross-zone traffic: the policy itself observes nothing and writes no metrics.

use super::context::ProxyContext;
use super::registry::{Redirect, SessionEntry};
use crate::balance::factors::{fetch::fetch_sample, prometheus, Load, LoadTracker};
use crate::balance::policy::{self, Action, BackendInput, Mode, Planner, SessionInput};
use crate::balance::routes_namespace::{Group, Namespaces};
use crate::balance::{backend_input, Backend, RouteView, SessionHandle};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const TICK: Duration = Duration::from_secs(1);
/// How often each TiDB's `/metrics` is read.
pub const METRICS_EVERY: Duration = Duration::from_secs(3);
/// One reading may take this long; a TiDB slower than that is left without fresh figures.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);
/// Figures older than this are dropped, and the factor with them.
pub const METRICS_STALE: Duration = Duration::from_secs(15);

pub fn start(ctx: Arc<ProxyContext>, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut driver = Driver::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = crate::timer::sleep(TICK) => {}
            }
            if ctx.closing.is_cancelled() {
                continue;
            }
            let now = Instant::now();
            if ctx.settings().policy.mode == Mode::Resource
                && driver
                    .read_at
                    .is_none_or(|t| now.duration_since(t) >= METRICS_EVERY)
            {
                driver.read_at = Some(now);
                let list = ctx.backends.snapshot();
                let prometheus = ctx.backends.prometheus();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = driver.read_metrics(&list, prometheus) => {}
                }
            }
            driver.tick(&ctx, Instant::now());
        }
    })
}

impl SessionHandle for SessionEntry {
    fn id(&self) -> u64 {
        self.id
    }

    fn backend(&self) -> String {
        SessionEntry::backend(self)
    }

    fn in_txn(&self) -> bool {
        self.in_transaction()
    }

    fn redirect_pending(&self) -> bool {
        self.has_redirect()
    }

    fn redirect(&self, to: Option<String>, reason: &'static str) {
        self.request_redirect(Redirect { target: to, reason });
    }

    fn close(&self) {
        self.request_close();
    }

    fn origin(&self) -> crate::balance::policy::Origin {
        SessionEntry::origin(self)
    }
}

#[derive(Default)]
struct Driver {
    planner: Planner,
    /// One planner per namespace group: a planner's memory (holds, strandings) covers the
    /// sessions it is shown, so groups must not share one.
    group_planners: HashMap<Group, Planner>,
    loads: LoadTracker,
    read_at: Option<Instant>,
    /// The score series published last round, so a backend or factor that left loses its own.
    published: HashSet<(String, &'static str)>,
    /// Each backend's traffic byte total at the last round, for the cross-zone count.
    traffic_seen: HashMap<String, u64>,
    /// Backends whose `/metrics` failed at the last reading, so the outage is logged once.
    unreadable: HashSet<String>,
    /// Why the last Prometheus reading failed, so its outage is logged once too.
    prometheus_failing: Option<String>,
    prometheus_used: bool,
}

impl Driver {
    /// Reads the figures from the Prometheus in PD's topology when there is one and it
    /// answers, and every other TiDB with a status port from its own `/metrics`, at once; a
    /// failure leaves that TiDB's figures to go stale.
    async fn read_metrics(&mut self, list: &[Arc<Backend>], prometheus: Option<String>) {
        let covered = match prometheus {
            Some(prom) => self.read_prometheus(list, &prom).await,
            None => HashSet::new(),
        };
        let mut reads = JoinSet::new();
        for b in list.iter().filter(|b| !covered.contains(&b.addr)) {
            if let Some(status) = b.status_addr() {
                let addr = b.addr.clone();
                reads.spawn(async move { (addr, fetch_sample(&status, METRICS_TIMEOUT).await) });
            }
        }
        while let Some(done) = reads.join_next().await {
            match done {
                Ok((addr, Ok(sample))) => {
                    if self.unreadable.remove(&addr) {
                        info!(backend = %addr, "load figures readable again");
                    }
                    self.loads.observe(&addr, Instant::now(), sample);
                }
                Ok((addr, Err(e))) => {
                    // Once per outage: the factors quietly dropping out would hide why.
                    if self.unreadable.insert(addr.clone()) {
                        warn!(backend = %addr, error = %e, "cannot read load figures; balancing on the other factors until they are back");
                    } else {
                        debug!(backend = %addr, error = %e, "no load figures");
                    }
                }
                Err(_) => {}
            }
        }
        self.loads.retain(|a| list.iter().any(|b| b.addr == a));
        self.unreadable
            .retain(|a| list.iter().any(|b| &b.addr == a));
    }

    /// The backends Prometheus gave figures for (matched by status address, its `instance`).
    async fn read_prometheus(&mut self, list: &[Arc<Backend>], prom: &str) -> HashSet<String> {
        let mut covered = HashSet::new();
        match prometheus::read_loads(prom, METRICS_TIMEOUT).await {
            Ok(by_instance) => {
                let at = Instant::now();
                for b in list {
                    if let Some(load) = b.status_addr().and_then(|s| by_instance.get(&s)) {
                        self.loads.record(&b.addr, at, *load);
                        covered.insert(b.addr.clone());
                    }
                }
                if self.prometheus_failing.take().is_some() || !self.prometheus_used {
                    info!(prometheus = %prom, backends = covered.len(), "reading load figures from Prometheus");
                }
                self.prometheus_used = true;
            }
            Err(e) => {
                if self.prometheus_failing.replace(e.to_string()).is_none() {
                    warn!(error = %e, "cannot read load figures from Prometheus; reading each TiDB's /metrics until it answers");
                }
            }
        }
        covered
    }

    fn tick(&mut self, ctx: &ProxyContext, now: Instant) {
        let settings = ctx.settings();
        let list = ctx.backends.snapshot();
        // The label groups of `routing-rule` follow the backend list as PD changes it.
        let policy = &crate::balance::label_routes::effective(&settings.policy, &list);
        let loads: HashMap<String, Load> = list
            .iter()
            .map(|b| (b.addr.clone(), self.loads.load(&b.addr, now, METRICS_STALE)))
            .collect();
        let inputs: Vec<BackendInput> = list
            .iter()
            .map(|b| {
                let fail_listed = settings.fail_backend_list.contains(&b.addr);
                backend_input(b, loads[&b.addr], fail_listed)
            })
            .collect();
        let entries = ctx.registry.entries();
        let users: Vec<String> = if settings.namespaces.is_empty() {
            Vec::new()
        } else {
            entries.iter().map(|e| e.view().user).collect()
        };
        let handles: Vec<Arc<dyn SessionHandle>> = entries
            .into_iter()
            .map(|e| e as Arc<dyn SessionHandle>)
            .collect();
        let sessions: Vec<SessionInput> = handles
            .iter()
            .map(|h| SessionInput {
                id: h.id(),
                backend: h.backend(),
                in_txn: h.in_txn(),
                redirect_pending: h.redirect_pending(),
                origin: h.origin(),
            })
            .collect();
        let actions = if settings.namespaces.is_empty() {
            self.planner.plan(&inputs, &sessions, policy, now)
        } else {
            self.plan_per_namespace(
                &settings.namespaces,
                &inputs,
                &sessions,
                &users,
                policy,
                now,
            )
        };
        apply(&handles, actions);
        let scores = self.publish_scores(ctx, &inputs, policy);
        self.count_cross_location(ctx, &list, policy);
        ctx.backends.set_route_view(RouteView {
            policy: policy.clone(),
            loads,
            scores,
        });
    }

    /// Each namespace group is balanced on its own, as TiProxy gives each namespace its own
    /// router: its sessions move only among its backends.
    fn plan_per_namespace(
        &mut self,
        namespaces: &Namespaces,
        inputs: &[BackendInput],
        sessions: &[SessionInput],
        users: &[String],
        policy: &policy::Policy,
        now: Instant,
    ) -> Vec<Action> {
        let backend_group: Vec<Group> = inputs
            .iter()
            .map(|b| namespaces.group_of_backend(&b.addr, &b.labels))
            .collect();
        let session_group: Vec<Group> = users.iter().map(|u| namespaces.group_of_user(u)).collect();
        let mut groups: Vec<&Group> = backend_group.iter().collect();
        groups.sort();
        groups.dedup();
        let mut actions = Vec::new();
        for g in groups {
            let ins: Vec<BackendInput> = inputs
                .iter()
                .zip(&backend_group)
                .filter(|(_, bg)| *bg == g)
                .map(|(b, _)| b.clone())
                .collect();
            let ses: Vec<SessionInput> = sessions
                .iter()
                .zip(&session_group)
                .filter(|(_, sg)| *sg == g)
                .map(|(s, _)| s.clone())
                .collect();
            let planner = self.group_planners.entry(g.clone()).or_default();
            actions.extend(planner.plan(&ins, &ses, policy, now));
        }
        self.group_planners
            .retain(|g, _| backend_group.contains(g) || session_group.contains(g));
        actions
    }

    /// Sets the score gauges and returns the scores for reports.
    fn publish_scores(
        &mut self,
        ctx: &ProxyContext,
        inputs: &[BackendInput],
        policy: &policy::Policy,
    ) -> HashMap<String, BTreeMap<&'static str, u32>> {
        let eligible: Vec<&BackendInput> = inputs
            .iter()
            .filter(|b| b.healthy && !b.fail_listed)
            .collect();
        let s = policy::scores(&eligible, policy);
        let gauge = &ctx.metrics.b_score;
        let mut now_published = HashSet::new();
        let mut report = HashMap::with_capacity(eligible.len());
        for (b, row) in eligible.iter().zip(&s.per_backend) {
            let mine: &mut BTreeMap<&'static str, u32> = report.entry(b.addr.clone()).or_default();
            for (f, v) in s.active.iter().zip(row) {
                mine.insert(f.as_str(), *v);
                gauge
                    .with_label_values(&[&b.addr, f.as_str()])
                    .set(i64::from(*v));
                now_published.insert((b.addr.clone(), f.as_str()));
            }
        }
        for (addr, factor) in self.published.difference(&now_published) {
            let _ = gauge.remove_label_values(&[addr.as_str(), factor]);
        }
        self.published = now_published;
        report
    }

    /// Adds the traffic of backends in another zone since the last round.
    fn count_cross_location(
        &mut self,
        ctx: &ProxyContext,
        list: &[Arc<Backend>],
        policy: &policy::Policy,
    ) {
        let counter = &ctx.metrics.cross_location_bytes;
        let mut seen = HashMap::with_capacity(list.len());
        for b in list {
            let total = b.metrics.inbound_bytes.get() + b.metrics.outbound_bytes.get();
            let before = self.traffic_seen.get(&b.addr).copied().unwrap_or(total);
            if policy.is_cross_location(&b.labels()) {
                counter.inc_by(total.saturating_sub(before));
            }
            seen.insert(b.addr.clone(), total);
        }
        self.traffic_seen = seen;
    }
}

/// Signals what the policy decided to the sessions it concerns.
fn apply(handles: &[Arc<dyn SessionHandle>], actions: Vec<Action>) {
    if actions.is_empty() {
        return;
    }
    let by_id: HashMap<u64, &Arc<dyn SessionHandle>> =
        handles.iter().map(|h| (h.id(), h)).collect();
    for a in actions {
        match a {
            Action::Move {
                session,
                to,
                reason,
                ..
            } => {
                if let Some(h) = by_id.get(&session) {
                    h.redirect(to, reason.as_str());
                }
            }
            Action::Close { session, from } => {
                if let Some(h) = by_id.get(&session) {
                    warn!(conn = session, backend = %from, "closing session still on a fail-backend-list backend after failover-timeout");
                    h.close();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BackendLease;
    use crate::balance::BackendSet;
    use crate::config::Config;
    use crate::proxy::context::SessionSettings;
    use crate::proxy::query_log::QueryErrorLog;

    fn ctx(addrs: &[&str]) -> ProxyContext {
        let set = Arc::new(BackendSet::new(
            &addrs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ));
        ProxyContext::new(
            SessionSettings::from_config(&Config::default()),
            crate::protocol::stream::TlsContext::default(),
            set,
            QueryErrorLog::new(false),
        )
    }

    /// The driver turns the policy's moves into redirect requests on the sessions themselves.
    #[test]
    fn imbalance_reaches_the_sessions_through_their_handles() {
        let ctx = ctx(&["a:1", "b:1"]);
        let list = ctx.backends.snapshot();
        let mut regs = Vec::new();
        let mut leases = Vec::new();
        for id in 0..6 {
            let r = ctx.registry.register(id, "127.0.0.1:9".parse().unwrap());
            r.entry.set_identity("app", "a:1");
            leases.push(BackendLease::new(list[0].clone()));
            regs.push(r);
        }
        regs[0].entry.set_in_transaction(true);
        let mut d = Driver::default();
        d.tick(&ctx, Instant::now());
        let asked: Vec<(u64, Option<Redirect>)> = regs
            .iter()
            .map(|r| (r.entry.id, r.entry.take_redirect()))
            .filter(|(_, r)| r.is_some())
            .collect();
        assert_eq!(asked.len(), 3, "half the gap of 6: {asked:?}");
        assert!(asked.iter().all(|(id, r)| *id != 0
            && r.as_ref().unwrap().target.as_deref() == Some("b:1")
            && r.as_ref().unwrap().reason == "conn"));
        assert_eq!(ctx.backends.route_view().policy, ctx.settings().policy);
    }

    #[test]
    fn traffic_to_another_zone_is_counted_and_scores_are_reported() {
        let ctx = ctx(&[]);
        let spec = |addr: &str, zone: &str| crate::balance::BackendSpec {
            addr: addr.into(),
            source: crate::balance::BackendSource::Pd,
            status_addr: None,
            labels: [("zone".to_string(), zone.to_string())].into(),
        };
        ctx.backends
            .set_specs(&[spec("near-x:1", "z1"), spec("far-x:1", "z2")]);
        let mut settings = ctx.settings().as_ref().clone();
        settings.policy.own_labels = [("zone".to_string(), "z1".to_string())].into();
        ctx.set_settings(settings);
        let mut d = Driver::default();
        d.tick(&ctx, Instant::now());
        let counter = &ctx.metrics.cross_location_bytes;
        let before = counter.get();
        let list = ctx.backends.snapshot();
        list[0].metrics.inbound_bytes.inc_by(1000);
        list[1].metrics.outbound_bytes.inc_by(7);
        d.tick(&ctx, Instant::now());
        // Only the far backend's bytes cross zones; the registry is this context's alone.
        assert_eq!(counter.get() - before, 7);
        let view = ctx.backends.route_view();
        assert_eq!(view.scores["far-x:1"].get("location"), Some(&1));
        assert_eq!(view.scores["near-x:1"].get("location"), Some(&0));
    }

    #[tokio::test]
    async fn unreadable_metrics_are_remembered_and_readable_ones_give_figures() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\n\r\nprocess_resident_memory_bytes 50\ntidb_server_memory_quota_bytes 100\n")
                    .await;
            }
        });
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bad = closed.local_addr().unwrap().to_string();
        drop(closed);
        let spec = |addr: &str, status: &str| crate::balance::BackendSpec {
            addr: addr.into(),
            source: crate::balance::BackendSource::Pd,
            status_addr: Some(status.into()),
            labels: Default::default(),
        };
        let set = BackendSet::default();
        set.set_specs(&[spec("ok:1", &good), spec("down:1", &bad)]);
        let mut d = Driver::default();
        d.read_metrics(&set.snapshot(), None).await;
        let now = Instant::now();
        assert_eq!(d.loads.load("ok:1", now, METRICS_STALE).memory, Some(0.5));
        assert_eq!(d.loads.load("down:1", now, METRICS_STALE), Load::default());
        assert!(d.unreadable.contains("down:1") && !d.unreadable.contains("ok:1"));
    }

    #[test]
    fn sessions_on_a_down_backend_are_drained() {
        let ctx = ctx(&["a:1", "b:1"]);
        ctx.backends.snapshot()[0].mark_unhealthy("refused");
        let r = ctx.registry.register(1, "127.0.0.1:9".parse().unwrap());
        r.entry.set_identity("app", "a:1");
        Driver::default().tick(&ctx, Instant::now());
        let req = r.entry.take_redirect().expect("a drain");
        assert_eq!((req.target, req.reason), (None, "backend-unhealthy"));
    }
}
