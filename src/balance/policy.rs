//! The balancing policy as a pure function of its inputs: which backend a new session gets
//! ([`choose`]) and which sessions move where ([`Planner::plan`]). Backends are scored on
//! TiProxy's factors in its order (label, health, memory, CPU, location, then connection
//! count) and compared lexicographically; a factor whose figures are missing on any candidate
//! drops out for that decision. No I/O, no clock, no metrics: the driver passes `now` in.

use super::factors::Load;
use crate::config::networks::Network;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// `[balance] policy`: which factors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every factor (TiProxy's default).
    #[default]
    Resource,
    /// Labels, location and connection counts: for clusters where cross-zone traffic costs more
    /// than an uneven load.
    Location,
    /// Connection counts only.
    Connection,
}

impl Mode {
    pub fn parse(s: &str) -> Mode {
        match s {
            "location" => Mode::Location,
            "connection" => Mode::Connection,
            _ => Mode::Resource,
        }
    }
}

/// `[balance] routing-policy`: how a new session picks among equally scored backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// The best scored backend, fewest sessions among equals.
    #[default]
    PreferIdle,
    /// Any backend in the best scored group, whatever its session count.
    Random,
}

impl Routing {
    pub fn parse(s: &str) -> Routing {
        match s {
            "random" => Routing::Random,
            _ => Routing::PreferIdle,
        }
    }
}

/// The scored factors, in priority order. Status (healthy, not fail-listed) comes before all of
/// them and is not scored: an unhealthy backend is no candidate at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Factor {
    Label,
    Health,
    Memory,
    Cpu,
    Location,
}

pub const FACTORS: [Factor; 5] = [
    Factor::Label,
    Factor::Health,
    Factor::Memory,
    Factor::Cpu,
    Factor::Location,
];

impl Factor {
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Label => "label",
            Factor::Health => "health",
            Factor::Memory => "memory",
            Factor::Cpu => "cpu",
            Factor::Location => "location",
        }
    }

    /// A move for this factor needs the source to score at least `from_min` and the target at
    /// least `gap` less: the gap is the hysteresis that keeps two similar backends from trading.
    fn move_rule(self) -> (u32, u32) {
        match self {
            Factor::Label | Factor::Health | Factor::Location => (1, 1),
            // Only an OOM risk (80 % and up) moves sessions, and only to a backend under 60 %.
            Factor::Memory => (2, 2),
            // 40 % and up, to a backend at least 40 points idler.
            Factor::Cpu => (2, 2),
        }
    }

    /// Sessions moved per second for this factor unless `[balance.<factor>]
    /// migrations-per-second` says otherwise (capped by max-migrations-per-second): CPU moves
    /// slowly because its figure lags the move by a metrics interval.
    fn builtin_rate(self) -> u32 {
        match self {
            Factor::Label | Factor::Location | Factor::Health => 10,
            Factor::Memory => 5,
            Factor::Cpu => 2,
        }
    }

    /// The rate configured for this factor under TiProxy's key; 0 is unset.
    fn configured_rate(self, rates: &Rates) -> f64 {
        match self {
            // TiProxy has no key for the label factor.
            Factor::Label => 0.0,
            Factor::Health => rates.health,
            Factor::Memory => rates.memory,
            Factor::Cpu => rates.cpu,
            Factor::Location => rates.location,
        }
    }
}

/// The per-factor rates of `[balance]`.
pub fn rates_from(b: &crate::config::BalanceConfig) -> Rates {
    Rates {
        status: b.status.migrations_per_second,
        health: b.health.migrations_per_second,
        memory: b.memory.migrations_per_second,
        cpu: b.cpu.migrations_per_second,
        location: b.location.migrations_per_second,
        conn: b.conn_count.migrations_per_second,
    }
}

/// TiProxy's per-factor `[balance.<factor>] migrations-per-second`: sessions moved per second
/// for that reason, fractions allowed (0.5 is one every two seconds). 0 (the default) keeps
/// the built-in rate; a value set is used as given, not capped by max-migrations-per-second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    /// Drains of unhealthy, removed and fail-listed backends; 0 drains them all at once.
    pub status: f64,
    pub health: f64,
    pub memory: f64,
    pub cpu: f64,
    pub location: f64,
    /// Connection-count moves; 0 moves half the gap a round (capped).
    pub conn: f64,
}

/// A query error rate at or above this makes a backend unhealthy for the health factor.
pub const HEALTH_ERROR_RATE: f64 = 0.5;
/// Memory usage (of the quota) at which the memory score rises: 60 % and 80 %.
pub const MEMORY_LEVELS: [f64; 2] = [0.6, 0.8];
/// CPU usage (of maxprocs) is scored in steps of this much.
pub const CPU_STEP: f64 = 0.2;
/// The label TiProxy's location factor compares.
pub const ZONE_LABEL: &str = "zone";

/// The policy's settings, from `[balance]`, `labels` and `[proxy]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    pub routing: Routing,
    /// `[balance] label-name`; empty turns the label factor off.
    pub label_name: String,
    /// The proxy's own top-level `labels`.
    pub own_labels: BTreeMap<String, String>,
    pub conn_count_ratio: f64,
    /// Caps the built-in rates; a rate set in `rates` is used as given.
    pub max_migrations_per_second: u32,
    pub rates: Rates,
    /// A fail-listed backend's sessions still there after this long are closed.
    pub failover_timeout: Duration,
    /// A session moved for balance is not moved again within this, and no session moves back
    /// along a pair of backends within it.
    pub hold: Duration,
    /// `[[balance.routes]]`, in order: the first rule a session's origin matches confines it
    /// to that rule's backends.
    pub routes: Vec<RouteRule>,
    /// TiProxy's `routing-rule`: backend groups read from the backends' labels, appended to
    /// `routes` by [`super::label_routes::effective`].
    pub label_routing: Option<LabelRouting>,
}

/// Which backend label groups sessions under TiProxy's `routing-rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelRouting {
    /// `port`: a TiDB labelled `tiproxy-port = "6001"` takes the sessions that reached that
    /// proxy port.
    Port,
    /// `client_cidr`: a TiDB labelled `cidr = "10.0.0.0/8,..."` takes those clients.
    ClientCidr,
}

impl LabelRouting {
    /// The config value; "" and TiProxy's `proxy_cidr` (not applicable here) give none.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "port" => Some(LabelRouting::Port),
            "client_cidr" => Some(LabelRouting::ClientCidr),
            _ => None,
        }
    }
}

/// Where a session came in: the listening port it reached and the client's address (the one
/// a trusted PROXY header names, behind a balancer). Routing rules match on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// 0 when unknown; matches only rules that name no port.
    pub port: u16,
    pub client: Option<IpAddr>,
}

/// One `[[balance.routes]]` entry: sessions whose origin matches every criterion given (an
/// empty list matches anything) may use only `backends`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteRule {
    pub name: String,
    pub ports: Vec<u16>,
    pub client_networks: Vec<Network>,
    pub backends: Vec<String>,
}

impl RouteRule {
    fn matches(&self, origin: &Origin) -> bool {
        let port_ok = self.ports.is_empty() || self.ports.contains(&origin.port);
        let client_ok = self.client_networks.is_empty()
            || origin
                .client
                .is_some_and(|ip| self.client_networks.iter().any(|n| n.contains(ip)));
        port_ok && client_ok
    }
}

/// The rule that confines a session from `origin`, if any: the first that matches.
pub fn route_for<'a>(policy: &'a Policy, origin: &Origin) -> Option<&'a RouteRule> {
    policy.routes.iter().find(|r| r.matches(origin))
}

/// Whether a session from `origin` may use the backend at `addr`.
pub fn route_allows(policy: &Policy, origin: &Origin, addr: &str) -> bool {
    route_for(policy, origin).is_none_or(|r| r.backends.iter().any(|b| b == addr))
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Resource,
            routing: Routing::PreferIdle,
            label_name: String::new(),
            own_labels: BTreeMap::new(),
            conn_count_ratio: 1.5,
            max_migrations_per_second: 10,
            rates: Rates::default(),
            failover_timeout: Duration::from_secs(60),
            hold: Duration::from_secs(30),
            routes: Vec::new(),
            label_routing: None,
        }
    }
}

impl Policy {
    fn own_label(&self) -> Option<&str> {
        if self.label_name.is_empty() || self.mode == Mode::Connection {
            return None;
        }
        self.own_labels.get(&self.label_name).map(String::as_str)
    }

    fn own_zone(&self) -> Option<&str> {
        if self.mode == Mode::Connection {
            return None;
        }
        self.own_labels.get(ZONE_LABEL).map(String::as_str)
    }

    /// Whether a backend is in another location than the proxy (for the cross-zone traffic
    /// count); `false` when either side has no zone.
    pub fn is_cross_location(&self, labels: &BTreeMap<String, String>) -> bool {
        match (self.own_labels.get(ZONE_LABEL), labels.get(ZONE_LABEL)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }
}

/// One backend as the policy sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendInput {
    pub addr: String,
    pub healthy: bool,
    /// In fail-backend-list: no new sessions, and its sessions drain.
    pub fail_listed: bool,
    pub sessions: u64,
    pub labels: BTreeMap<String, String>,
    /// Figures from the backend's status port; `None` fields are missing or stale.
    pub load: Load,
}

impl BackendInput {
    fn eligible(&self) -> bool {
        self.healthy && !self.fail_listed
    }
}

/// One session as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInput {
    pub id: u64,
    /// "" during the handshake.
    pub backend: String,
    pub in_txn: bool,
    pub redirect_pending: bool,
    /// Where it came in, so moves keep it within its routing rule's backends.
    pub origin: Origin,
}

/// Why a session moves: the `reason` label of `tiproxy_balance_migrate_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    FailBackendList,
    BackendRemoved,
    BackendUnhealthy,
    Factor(Factor),
    Conn,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FailBackendList => "fail-backend-list",
            Reason::BackendRemoved => "backend-removed",
            Reason::BackendUnhealthy => "backend-unhealthy",
            Reason::Factor(f) => f.as_str(),
            Reason::Conn => "conn",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move the session at its next transaction boundary; `to: None` lets it pick the best
    /// backend then (a drain).
    Move {
        session: u64,
        from: String,
        to: Option<String>,
        reason: Reason,
    },
    /// End the session (it outstayed failover-timeout on a fail-listed backend).
    Close { session: u64, from: String },
}

/// Each candidate's score on each factor that counts for this decision (`None`: dropped out).
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub active: Vec<Factor>,
    /// Per candidate, one score per active factor, in `active` order; lower is better.
    pub per_backend: Vec<Vec<u32>>,
}

fn score(f: Factor, b: &BackendInput, policy: &Policy) -> Option<u32> {
    let level = |v: f64, levels: &[f64]| levels.iter().filter(|l| v >= **l).count() as u32;
    match f {
        Factor::Label => {
            let own = policy.own_label()?;
            Some(u32::from(
                b.labels.get(&policy.label_name).map(String::as_str) != Some(own),
            ))
        }
        Factor::Location => {
            let own = policy.own_zone()?;
            Some(u32::from(
                b.labels.get(ZONE_LABEL).map(String::as_str) != Some(own),
            ))
        }
        _ if policy.mode != Mode::Resource => None,
        Factor::Health => b.load.error_rate.map(|r| u32::from(r >= HEALTH_ERROR_RATE)),
        Factor::Memory => b.load.memory.map(|m| level(m, &MEMORY_LEVELS)),
        Factor::Cpu => b
            .load
            .cpu
            .map(|c| ((c.max(0.0) / CPU_STEP) as u32).min((1.0 / CPU_STEP) as u32)),
    }
}

/// Scores the candidates; a factor counts only when every candidate has a figure for it, so a
/// backend whose metrics are missing is compared on the remaining factors, as all others are.
pub fn scores(cands: &[&BackendInput], policy: &Policy) -> Scores {
    let mut active = Vec::new();
    let mut columns: Vec<Vec<u32>> = Vec::new();
    for f in FACTORS {
        let col: Option<Vec<u32>> = cands.iter().map(|b| score(f, b, policy)).collect();
        if let Some(col) = col.filter(|c| !c.is_empty()) {
            active.push(f);
            columns.push(col);
        }
    }
    let per_backend = (0..cands.len())
        .map(|i| columns.iter().map(|c| c[i]).collect())
        .collect();
    Scores {
        active,
        per_backend,
    }
}

/// The backend a new session goes to, as an index into `cands` (healthy backends it may use):
/// the best scored, fewest sessions among equals (earliest on ties); with `Routing::Random`,
/// the one `roll` picks among the best scored.
pub fn choose(cands: &[&BackendInput], policy: &Policy, roll: u64) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    let s = scores(cands, policy);
    let best = s.per_backend.iter().min()?;
    let group: Vec<usize> = (0..cands.len())
        .filter(|i| &s.per_backend[*i] == best)
        .collect();
    match policy.routing {
        Routing::Random => Some(group[(roll % group.len() as u64) as usize]),
        Routing::PreferIdle => group.into_iter().min_by_key(|i| (cands[*i].sessions, *i)),
    }
}

/// Like [`choose`], for a session from `origin`: only the backends its routing rule allows
/// are candidates, and none at all when the rule's backends are all down (a read-only port
/// must never fall back to the primary).
pub fn choose_for(
    cands: &[&BackendInput],
    policy: &Policy,
    roll: u64,
    origin: &Origin,
) -> Option<usize> {
    let allowed: Vec<usize> = (0..cands.len())
        .filter(|i| route_allows(policy, origin, &cands[*i].addr))
        .collect();
    let subset: Vec<&BackendInput> = allowed.iter().map(|i| cands[*i]).collect();
    choose(&subset, policy, roll).map(|k| allowed[k])
}

/// Why a session on `addr` must leave it, if it must.
pub fn drain_reason(addr: &str, backends: &[BackendInput]) -> Option<Reason> {
    match backends.iter().find(|b| b.addr == addr) {
        None => Some(Reason::BackendRemoved),
        Some(b) if b.fail_listed => Some(Reason::FailBackendList),
        Some(b) if !b.healthy => Some(Reason::BackendUnhealthy),
        Some(_) => None,
    }
}

/// What the planner remembers between rounds: when sessions were stranded, which were moved
/// for balance (and so are held), and which pairs of backends sessions moved along.
#[derive(Debug, Default)]
pub struct Planner {
    stranded_since: HashMap<u64, Instant>,
    moved_at: HashMap<u64, Instant>,
    pair_moved_at: HashMap<(String, String), Instant>,
    /// Moves owed to a fractional rate (0.5 a second moves one every other round), for the
    /// reason that is moving sessions now; dropped when it stops, so no burst builds up.
    shift_credit: Option<(Reason, f64)>,
    /// The same for drains under a `status` rate.
    drain_credit: f64,
}

/// A wanted move from one backend to another for one reason, before sessions are picked.
#[derive(Debug, Clone, PartialEq)]
struct Shift {
    from: usize,
    to: usize,
    /// Sessions a round (a second); fractions carry over to the next round.
    rate: f64,
    reason: Reason,
}

/// Adds a round's `rate` to `credit` and takes the whole moves out of it.
fn spend(credit: &mut f64, rate: f64) -> usize {
    *credit += rate.clamp(0.0, 1e6);
    let whole = credit.floor();
    *credit -= whole;
    whole as usize
}

impl Planner {
    /// One round (the driver runs one a second, which is what rates are per): drains for
    /// backends sessions must leave (all of them unless a `status` rate is set), closes for
    /// sessions that outstayed failover-timeout, and at most one balancing shift, for the
    /// highest-priority factor that wants one.
    pub fn plan(
        &mut self,
        backends: &[BackendInput],
        sessions: &[SessionInput],
        policy: &Policy,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut drains = Vec::new();
        let live: std::collections::HashSet<u64> = sessions.iter().map(|s| s.id).collect();
        self.stranded_since.retain(|id, _| live.contains(id));
        self.moved_at
            .retain(|id, at| live.contains(id) && now.duration_since(*at) < policy.hold);
        self.pair_moved_at
            .retain(|_, at| now.duration_since(*at) < policy.hold);
        for s in sessions.iter().filter(|s| !s.backend.is_empty()) {
            let Some(reason) = drain_reason(&s.backend, backends) else {
                self.stranded_since.remove(&s.id);
                continue;
            };
            let since = *self.stranded_since.entry(s.id).or_insert(now);
            if reason == Reason::FailBackendList
                && now.duration_since(since) >= policy.failover_timeout
            {
                actions.push(Action::Close {
                    session: s.id,
                    from: s.backend.clone(),
                });
                continue;
            }
            let has_target = backends.iter().any(|b| {
                b.eligible() && b.addr != s.backend && route_allows(policy, &s.origin, &b.addr)
            });
            if has_target && !s.redirect_pending {
                drains.push(Action::Move {
                    session: s.id,
                    from: s.backend.clone(),
                    to: None,
                    reason,
                });
            }
        }
        if policy.rates.status > 0.0 && !drains.is_empty() {
            drains.truncate(spend(&mut self.drain_credit, policy.rates.status));
        } else {
            self.drain_credit = 0.0;
        }
        actions.extend(drains);
        let eligible: Vec<&BackendInput> = backends.iter().filter(|b| b.eligible()).collect();
        let Some(shift) = self.shift(&eligible, policy) else {
            self.shift_credit = None;
            return actions;
        };
        let mut credit = match self.shift_credit {
            Some((reason, c)) if reason == shift.reason => c,
            _ => 0.0,
        };
        let count = spend(&mut credit, shift.rate);
        self.shift_credit = Some((shift.reason, credit));
        let (from, to) = (&eligible[shift.from].addr, &eligible[shift.to].addr);
        let movable: Vec<&SessionInput> = sessions
            .iter()
            .filter(|s| {
                &s.backend == from
                    && !s.in_txn
                    && !s.redirect_pending
                    && !self.moved_at.contains_key(&s.id)
                    && route_allows(policy, &s.origin, to)
            })
            .take(count)
            .collect();
        let mut moved = 0;
        for s in movable {
            self.moved_at.insert(s.id, now);
            actions.push(Action::Move {
                session: s.id,
                from: from.clone(),
                to: Some(to.clone()),
                reason: shift.reason,
            });
            moved += 1;
        }
        if moved > 0 {
            self.pair_moved_at.insert((from.clone(), to.clone()), now);
        }
        actions
    }

    /// Whether sessions moved `to -> from` recently: moving `from -> to` now would trade them back.
    fn would_reverse(&self, from: &str, to: &str) -> bool {
        self.pair_moved_at
            .contains_key(&(to.to_owned(), from.to_owned()))
    }

    fn shift(&self, eligible: &[&BackendInput], policy: &Policy) -> Option<Shift> {
        if eligible.len() < 2 {
            return None;
        }
        let s = scores(eligible, policy);
        let v = &s.per_backend;
        let cap = policy.max_migrations_per_second;
        for (k, f) in s.active.iter().enumerate() {
            let (from_min, gap) = f.move_rule();
            // The worst on this factor (more sessions first), to the best overall that is no
            // worse on any higher-priority factor and better by the gap on this one.
            let mut froms: Vec<usize> = (0..eligible.len())
                .filter(|i| v[*i][k] >= from_min)
                .collect();
            froms.sort_by_key(|i| {
                (
                    std::cmp::Reverse(v[*i][k]),
                    std::cmp::Reverse(eligible[*i].sessions),
                )
            });
            for from in froms {
                if eligible[from].sessions == 0 {
                    continue;
                }
                let to = (0..eligible.len())
                    .filter(|t| {
                        *t != from
                            && v[*t][..k] <= v[from][..k]
                            && v[*t][k] + gap <= v[from][k]
                            && !self.would_reverse(&eligible[from].addr, &eligible[*t].addr)
                    })
                    .min_by_key(|t| (&v[*t], eligible[*t].sessions, *t));
                if let Some(to) = to {
                    let rate = match f.configured_rate(&policy.rates) {
                        r if r > 0.0 => r,
                        _ => f.builtin_rate().min(cap) as f64,
                    };
                    return Some(Shift {
                        from,
                        to,
                        rate,
                        reason: Reason::Factor(*f),
                    });
                }
            }
        }
        self.conn_shift(eligible, v, policy)
    }

    /// Session counts out of balance between two backends the factors rank alike (or the
    /// target better): the busiest such pair, half the gap a round (at most
    /// max-migrations-per-second) or the configured conn-count rate.
    fn conn_shift(
        &self,
        eligible: &[&BackendInput],
        v: &[Vec<u32>],
        policy: &Policy,
    ) -> Option<Shift> {
        let ratio = policy.conn_count_ratio.max(1.0);
        let mut best: Option<(u64, usize, usize)> = None;
        for from in 0..eligible.len() {
            for to in 0..eligible.len() {
                let (hi, lo) = (eligible[from].sessions, eligible[to].sessions);
                if from == to
                    || v[to] > v[from]
                    || hi < lo + 2
                    || (hi as f64) <= (lo as f64) * ratio
                    || self.would_reverse(&eligible[from].addr, &eligible[to].addr)
                {
                    continue;
                }
                if best.is_none_or(|(gap, _, _)| hi - lo > gap) {
                    best = Some((hi - lo, from, to));
                }
            }
        }
        let (gap, from, to) = best?;
        let rate = match policy.rates.conn {
            r if r > 0.0 => r,
            _ => (gap / 2).min(u64::from(policy.max_migrations_per_second)) as f64,
        };
        Some(Shift {
            from,
            to,
            rate,
            reason: Reason::Conn,
        })
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
