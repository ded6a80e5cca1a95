//! Table tests of the policy: routing of new sessions and the moves of each round.

use super::*;
use crate::config::networks::Network;

fn zone(z: &str) -> BTreeMap<String, String> {
    [("zone".to_string(), z.to_string())].into()
}

fn b(addr: &str, sessions: u64) -> BackendInput {
    BackendInput {
        addr: addr.into(),
        healthy: true,
        sessions,
        ..BackendInput::default()
    }
}

fn with_load(
    mut x: BackendInput,
    cpu: Option<f64>,
    memory: Option<f64>,
    err: Option<f64>,
) -> BackendInput {
    x.load = Load {
        cpu,
        memory,
        error_rate: err,
    };
    x
}

fn in_zone(mut x: BackendInput, z: &str) -> BackendInput {
    x.labels = zone(z);
    x
}

fn sessions_on(addr: &str, ids: std::ops::Range<u64>) -> Vec<SessionInput> {
    ids.map(|id| SessionInput {
        id,
        backend: addr.into(),
        in_txn: false,
        redirect_pending: false,
        origin: Origin::default(),
    })
    .collect()
}

fn zoned_policy(label_name: &str, own: &str) -> Policy {
    Policy {
        label_name: label_name.into(),
        own_labels: zone(own),
        ..Policy::default()
    }
}

fn pick(list: &[BackendInput], policy: &Policy) -> Option<String> {
    let refs: Vec<&BackendInput> = list.iter().collect();
    choose(&refs, policy, 0).map(|i| list[i].addr.clone())
}

/// (from, to, reason, count) of the balancing moves in a round's actions.
fn moves(actions: &[Action]) -> Vec<(String, String, &'static str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Move {
                from,
                to: Some(to),
                reason,
                ..
            } => Some((from.clone(), to.clone(), reason.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn new_sessions_follow_the_factors_in_order() {
    let p = Policy::default();
    let cases: Vec<(&str, Vec<BackendInput>, Policy, Option<&str>)> = vec![
        (
            "fewest sessions, no figures",
            vec![b("a", 3), b("b", 1), b("c", 1)],
            p.clone(),
            Some("b"),
        ),
        ("nothing to choose", vec![], p.clone(), None),
        (
            "same label first, even when busier",
            vec![in_zone(b("a", 0), "z2"), in_zone(b("b", 9), "z1")],
            zoned_policy("zone", "z1"),
            Some("b"),
        ),
        (
            "no same-label backend: any other",
            vec![in_zone(b("a", 4), "z2"), in_zone(b("c", 2), "z3")],
            zoned_policy("zone", "z1"),
            Some("c"),
        ),
        (
            "location without label-name still prefers the own zone",
            vec![in_zone(b("a", 0), "z2"), in_zone(b("b", 5), "z1")],
            zoned_policy("", "z1"),
            Some("b"),
        ),
        (
            "an idle CPU beats fewer sessions",
            vec![
                with_load(b("a", 1), Some(0.9), None, None),
                with_load(b("b", 8), Some(0.1), None, None),
            ],
            p.clone(),
            Some("b"),
        ),
        (
            "a missing CPU figure takes the factor out: counts decide",
            vec![with_load(b("a", 1), Some(0.9), None, None), b("b", 8)],
            p.clone(),
            Some("a"),
        ),
        (
            "health before memory before CPU",
            vec![
                with_load(b("a", 0), Some(0.0), Some(0.1), Some(0.9)),
                with_load(b("b", 0), Some(0.0), Some(0.9), Some(0.0)),
                with_load(b("c", 0), Some(0.9), Some(0.1), Some(0.0)),
            ],
            p.clone(),
            Some("c"),
        ),
        (
            "connection mode ignores figures and labels",
            vec![
                with_load(in_zone(b("a", 1), "z1"), Some(0.9), None, None),
                in_zone(b("b", 0), "z2"),
            ],
            Policy {
                mode: Mode::Connection,
                ..zoned_policy("zone", "z1")
            },
            Some("b"),
        ),
        (
            "location mode ignores load figures",
            vec![
                with_load(b("a", 1), Some(0.9), None, None),
                with_load(b("b", 3), Some(0.0), None, None),
            ],
            Policy {
                mode: Mode::Location,
                ..Policy::default()
            },
            Some("a"),
        ),
    ];
    for (name, list, policy, want) in cases {
        assert_eq!(pick(&list, &policy).as_deref(), want, "{name}");
    }
}

#[test]
fn random_routing_stays_in_the_best_group() {
    let p = Policy {
        routing: Routing::Random,
        ..zoned_policy("zone", "z1")
    };
    let list = [
        in_zone(b("a", 9), "z1"),
        in_zone(b("x", 0), "z2"),
        in_zone(b("b", 0), "z1"),
    ];
    let refs: Vec<&BackendInput> = list.iter().collect();
    let picked: std::collections::BTreeSet<usize> =
        (0..8).map(|r| choose(&refs, &p, r).unwrap()).collect();
    assert_eq!(
        picked,
        [0, 2].into(),
        "both same-zone backends, never the other zone"
    );
}

/// A name, the backends (each holding as many idle sessions as it counts), the policy, and the
/// moves wanted as (from, to, reason).
type MoveCase = (
    &'static str,
    Vec<BackendInput>,
    Policy,
    Vec<(&'static str, &'static str, &'static str)>,
);

#[test]
fn each_round_moves_for_the_first_factor_that_wants_it() {
    let p = Policy::default();
    let cases: Vec<MoveCase> = vec![
        (
            "a busy CPU sheds to an idle one at the CPU rate",
            vec![
                with_load(b("a", 10), Some(0.9), None, None),
                with_load(b("b", 10), Some(0.1), None, None),
            ],
            p.clone(),
            vec![("a", "b", "cpu"); 2],
        ),
        (
            "two busy CPUs do not trade",
            vec![
                with_load(b("a", 10), Some(0.9), None, None),
                with_load(b("b", 10), Some(0.75), None, None),
            ],
            p.clone(),
            vec![],
        ),
        (
            "missing figures: counts decide",
            vec![with_load(b("a", 10), Some(0.9), None, None), b("b", 0)],
            Policy {
                max_migrations_per_second: 3,
                ..p.clone()
            },
            vec![("a", "b", "conn"); 3],
        ),
        (
            "memory at OOM risk moves to one under 60 %",
            vec![
                with_load(b("a", 4), None, Some(0.85), None),
                with_load(b("b", 4), None, Some(0.3), None),
            ],
            p.clone(),
            vec![("a", "b", "memory"); 4],
        ),
        (
            "memory at 85 % and 70 %: no target",
            vec![
                with_load(b("a", 4), None, Some(0.85), None),
                with_load(b("b", 4), None, Some(0.7), None),
            ],
            p.clone(),
            vec![],
        ),
        (
            "health comes before CPU",
            vec![
                with_load(b("a", 3), Some(0.0), None, Some(0.9)),
                with_load(b("b", 3), Some(0.9), None, Some(0.0)),
            ],
            p.clone(),
            vec![("a", "b", "health"); 3],
        ),
        (
            "a busy CPU never sheds into another label",
            vec![
                with_load(in_zone(b("a", 10), "z1"), Some(0.9), None, None),
                with_load(in_zone(b("b", 0), "z2"), Some(0.0), None, None),
            ],
            zoned_policy("zone", "z1"),
            vec![],
        ),
        (
            "sessions on another label come home",
            vec![in_zone(b("a", 0), "z1"), in_zone(b("b", 2), "z2")],
            zoned_policy("zone", "z1"),
            vec![("b", "a", "label"); 2],
        ),
        (
            "counts balance only between backends ranked alike",
            vec![in_zone(b("a", 10), "z1"), in_zone(b("b", 0), "z2")],
            zoned_policy("zone", "z1"),
            vec![],
        ),
        (
            "10 against 9 is balanced",
            vec![b("a", 10), b("b", 9)],
            p.clone(),
            vec![],
        ),
        (
            "1 against 0 is not worth a move",
            vec![b("a", 1), b("b", 0)],
            p.clone(),
            vec![],
        ),
    ];
    for (name, list, policy, want) in cases {
        let mut sessions = Vec::new();
        let mut next = 0;
        for x in &list {
            sessions.extend(sessions_on(&x.addr, next..next + x.sessions));
            next += x.sessions;
        }
        let got = moves(&Planner::default().plan(&list, &sessions, &policy, Instant::now()));
        let want: Vec<(String, String, &str)> = want
            .into_iter()
            .map(|(f, t, r)| (f.to_string(), t.to_string(), r))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn sessions_in_transactions_or_already_asked_stay() {
    let list = [b("a", 6), b("b", 0)];
    let mut sessions = sessions_on("a", 0..6);
    for s in sessions.iter_mut().take(4) {
        s.in_txn = s.id % 2 == 0;
        s.redirect_pending = s.id % 2 == 1;
    }
    let got = Planner::default().plan(&list, &sessions, &Policy::default(), Instant::now());
    let ids: Vec<u64> = got
        .iter()
        .map(|a| match a {
            Action::Move { session, .. } => *session,
            Action::Close { session, .. } => *session,
        })
        .collect();
    assert_eq!(ids, [4, 5]);
}

#[test]
fn drains_need_a_target_and_fail_listed_sessions_close_after_the_timeout() {
    let mut list = vec![b("a", 1), b("b", 1), b("c", 1)];
    list[1].healthy = false;
    list[2].fail_listed = true;
    let mut sessions = sessions_on("a", 0..1);
    sessions.extend(sessions_on("b", 1..2));
    sessions.extend(sessions_on("c", 2..3));
    sessions.extend(sessions_on("gone", 3..4));
    sessions.extend(sessions_on("", 4..5));
    let p = Policy {
        failover_timeout: Duration::from_secs(60),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut planner = Planner::default();
    let drains = |acts: &[Action]| -> Vec<(u64, &'static str)> {
        acts.iter()
            .map(|a| match a {
                Action::Move {
                    session,
                    to: None,
                    reason,
                    ..
                } => (*session, reason.as_str()),
                Action::Move { session, .. } => (*session, "balance"),
                Action::Close { session, .. } => (*session, "close"),
            })
            .collect()
    };
    let first = planner.plan(&list, &sessions, &p, t0);
    assert_eq!(
        drains(&first),
        [
            (1, "backend-unhealthy"),
            (2, "fail-backend-list"),
            (3, "backend-removed")
        ]
    );
    let later = planner.plan(&list, &sessions, &p, t0 + Duration::from_secs(61));
    assert!(drains(&later).contains(&(2, "close")), "{later:?}");
    // With nowhere to go, nobody is asked to move.
    list[0].healthy = false;
    let stuck = Planner::default().plan(&list, &sessions, &p, t0);
    assert!(
        drains(&stuck).iter().all(|(_, r)| *r == "close"),
        "{stuck:?}"
    );
    assert_eq!(drain_reason("a", &[]), Some(Reason::BackendRemoved));
}

/// Load that flips between two backends every round must not make sessions trade places.
#[test]
fn oscillating_load_does_not_ping_pong() {
    let p = Policy {
        hold: Duration::from_secs(30),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut planner = Planner::default();
    let mut on: HashMap<u64, String> = (0..20)
        .map(|id| (id, if id < 10 { "a" } else { "b" }.to_string()))
        .collect();
    let mut moved_at: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut pairs: Vec<(u64, String, String)> = Vec::new();
    for round in 0..25u64 {
        let (busy, idle) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let count = |addr: &str| on.values().filter(|v| *v == addr).count() as u64;
        let list = [
            with_load(b(busy, count(busy)), Some(0.95), None, None),
            with_load(b(idle, count(idle)), Some(0.05), None, None),
        ];
        let mut sessions: Vec<SessionInput> = on
            .iter()
            .map(|(id, addr)| SessionInput {
                id: *id,
                backend: addr.clone(),
                in_txn: false,
                redirect_pending: false,
                origin: Origin::default(),
            })
            .collect();
        sessions.sort_by_key(|s| s.id);
        let now = t0 + Duration::from_secs(round);
        for a in planner.plan(&list, &sessions, &p, now) {
            if let Action::Move {
                session,
                from,
                to: Some(to),
                ..
            } = a
            {
                moved_at.entry(session).or_default().push(round);
                pairs.push((round, from, to.clone()));
                on.insert(session, to);
            }
        }
    }
    for (id, rounds) in &moved_at {
        for w in rounds.windows(2) {
            assert!(w[1] - w[0] >= 30, "session {id} moved in rounds {rounds:?}");
        }
    }
    for (r, from, to) in &pairs {
        let back = pairs
            .iter()
            .find(|(r2, f2, t2)| r2 > r && r2 - r < 30 && f2 == to && t2 == from);
        assert!(
            back.is_none(),
            "{from}->{to} in round {r} reversed: {back:?}"
        );
    }
    assert!(!pairs.is_empty(), "the first busy backend sheds");
}

#[test]
fn a_held_session_is_not_moved_again_but_others_are() {
    let list = [
        with_load(b("a", 4), Some(0.9), None, None),
        with_load(b("b", 0), Some(0.0), None, None),
    ];
    let sessions = sessions_on("a", 0..4);
    let p = Policy::default();
    let mut planner = Planner::default();
    let t0 = Instant::now();
    let ids = |acts: Vec<Action>| -> Vec<u64> {
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Move { session, .. } => Some(session),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ids(planner.plan(&list, &sessions, &p, t0)), [0, 1]);
    // Say the moves did not happen yet (the sessions were busy): the next round picks others.
    assert_eq!(
        ids(planner.plan(&list, &sessions, &p, t0 + Duration::from_secs(1))),
        [2, 3]
    );
    assert_eq!(
        ids(planner.plan(&list, &sessions, &p, t0 + Duration::from_secs(2))),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids(planner.plan(&list, &sessions, &p, t0 + Duration::from_secs(31))),
        [0, 1]
    );
}

#[test]
fn scores_name_only_the_factors_that_count() {
    let list = [
        with_load(in_zone(b("a", 0), "z1"), Some(0.5), Some(0.7), None),
        in_zone(b("b", 0), "z2"),
    ];
    let refs: Vec<&BackendInput> = list.iter().collect();
    let s = scores(&refs, &zoned_policy("zone", "z1"));
    assert_eq!(s.active, [Factor::Label, Factor::Location]);
    assert_eq!(s.per_backend, [vec![0, 0], vec![1, 1]]);
    let s = scores(&refs[..1], &Policy::default());
    assert_eq!(s.active, [Factor::Memory, Factor::Cpu]);
    assert_eq!(s.per_backend, [vec![1, 2]]);
    assert!(!Policy::default().is_cross_location(&zone("z1")));
    assert!(zoned_policy("", "z1").is_cross_location(&zone("z2")));
    assert_eq!(
        (Mode::parse("location"), Routing::parse("random")),
        (Mode::Location, Routing::Random)
    );
}

fn routed_policy() -> Policy {
    let net = |s: &str| Network::parse(s).unwrap();
    Policy {
        routes: vec![
            RouteRule {
                name: "replicas".into(),
                ports: vec![6001],
                backends: vec!["r1".into(), "r2".into()],
                ..RouteRule::default()
            },
            RouteRule {
                name: "batch clients".into(),
                client_networks: vec![net("10.9.0.0/16")],
                backends: vec!["batch".into()],
                ..RouteRule::default()
            },
            RouteRule {
                name: "reporting on 6002".into(),
                ports: vec![6002],
                client_networks: vec![net("127.0.0.2")],
                backends: vec!["r2".into()],
            },
        ],
        ..Policy::default()
    }
}

fn origin(port: u16, client: &str) -> Origin {
    Origin {
        port,
        client: Some(client.parse().unwrap()),
    }
}

#[test]
fn routing_rules_confine_new_sessions() {
    let p = routed_policy();
    let all = [b("primary", 5), b("r1", 9), b("r2", 3), b("batch", 0)];
    let down = |x: BackendInput| BackendInput {
        healthy: false,
        ..x
    };
    // (origin, backends, expected): the first matching rule wins; no rule, every backend.
    let cases: Vec<(Origin, Vec<BackendInput>, Option<&str>)> = vec![
        // No rule matches port 6000 from 10.1.1.1: fewest sessions overall.
        (origin(6000, "10.1.1.1"), all.to_vec(), Some("batch")),
        // The read-only port: the idler replica, never the primary.
        (origin(6001, "10.1.1.1"), all.to_vec(), Some("r2")),
        // Port rule first, so a batch client on 6001 still gets a replica.
        (origin(6001, "10.9.3.4"), all.to_vec(), Some("r2")),
        // A client network rule on the default port.
        (origin(6000, "10.9.3.4"), all.to_vec(), Some("batch")),
        // IPv4-mapped client addresses of a dual-stack listener match IPv4 networks.
        (origin(6000, "::ffff:10.9.3.4"), all.to_vec(), Some("batch")),
        // Both criteria must match: 127.0.0.2 on 6002 only.
        (origin(6002, "127.0.0.2"), all.to_vec(), Some("r2")),
        (origin(6002, "127.0.0.1"), all.to_vec(), Some("batch")),
        // All of a rule's backends down: nothing, not a fallback to the primary.
        (
            origin(6001, "10.1.1.1"),
            vec![b("primary", 0), down(b("r1", 0)), down(b("r2", 0))],
            None,
        ),
        // An unknown origin (port 0, no client) matches only rules without criteria.
        (Origin::default(), all.to_vec(), Some("batch")),
    ];
    for (o, list, want) in cases {
        let eligible: Vec<&BackendInput> = list.iter().filter(|x| x.healthy).collect();
        let got = choose_for(&eligible, &p, 0, &o).map(|i| eligible[i].addr.clone());
        assert_eq!(got.as_deref(), want, "origin {o:?}");
    }
}

#[test]
fn moves_keep_routed_sessions_within_their_rule() {
    let p = Policy {
        routes: vec![RouteRule {
            ports: vec![6001],
            backends: vec!["r1".into(), "r2".into()],
            ..RouteRule::default()
        }],
        ..Policy::default()
    };
    // r1 holds ten read-only-port sessions; the primary is the idlest backend but not theirs.
    let backends = [b("r1", 10), b("primary", 0), b("r2", 6)];
    let mut sessions = sessions_on("r1", 0..10);
    for s in &mut sessions {
        s.origin = origin(6001, "10.1.1.1");
    }
    let mut planner = Planner::default();
    let actions = planner.plan(&backends, &sessions, &p, Instant::now());
    assert!(
        moves(&actions).iter().all(|(_, to, _)| to != "primary"),
        "{actions:?}"
    );
    // Drained from r1 with r2 down too: no target the rule allows, so no move is asked for.
    let failing = [
        BackendInput {
            fail_listed: true,
            ..b("r1", 10)
        },
        b("primary", 0),
        BackendInput {
            healthy: false,
            ..b("r2", 0)
        },
    ];
    let actions = Planner::default().plan(&failing, &sessions, &p, Instant::now());
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Move { .. })),
        "{actions:?}"
    );
    // The same sessions from the default port may go anywhere.
    for s in &mut sessions {
        s.origin = origin(6000, "10.1.1.1");
    }
    let actions = Planner::default().plan(&backends, &sessions, &p, Instant::now());
    assert!(
        moves(&actions).iter().any(|(_, to, _)| to == "primary"),
        "{actions:?}"
    );
}

/// Moves a planner makes over `rounds` one-second rounds with the same backends and sessions
/// (nothing acts on them, so each round sees the same state minus the held sessions).
fn moves_per_round(
    list: &[BackendInput],
    sessions: &[SessionInput],
    p: &Policy,
    rounds: u64,
) -> Vec<usize> {
    let mut planner = Planner::default();
    let t0 = Instant::now();
    (0..rounds)
        .map(|r| {
            planner
                .plan(list, sessions, p, t0 + Duration::from_secs(r))
                .iter()
                .filter(|a| matches!(a, Action::Move { .. }))
                .count()
        })
        .collect()
}

#[test]
fn per_factor_rates_replace_the_built_in_ones_fractions_included() {
    let busy_cpu = [
        with_load(b("a", 40), Some(0.9), None, None),
        with_load(b("b", 0), Some(0.1), None, None),
    ];
    let sessions = sessions_on("a", 0..40);
    // Built in: CPU moves 2 a second.
    assert_eq!(
        moves_per_round(&busy_cpu, &sessions, &Policy::default(), 3),
        [2, 2, 2]
    );
    // TiProxy's balance.cpu.migrations-per-second = 0.5: one every other second.
    let half = Policy {
        rates: Rates {
            cpu: 0.5,
            ..Rates::default()
        },
        ..Policy::default()
    };
    assert_eq!(
        moves_per_round(&busy_cpu, &sessions, &half, 4),
        [0, 1, 0, 1]
    );
    // A rate that is set is not capped by max-migrations-per-second; the built-in one is.
    let fast = Policy {
        rates: Rates {
            cpu: 15.0,
            ..Rates::default()
        },
        max_migrations_per_second: 1,
        ..Policy::default()
    };
    assert_eq!(moves_per_round(&busy_cpu, &sessions, &fast, 2), [15, 15]);
    let capped = Policy {
        max_migrations_per_second: 1,
        ..Policy::default()
    };
    assert_eq!(moves_per_round(&busy_cpu, &sessions, &capped, 2), [1, 1]);
    // Another factor's rate does not touch CPU moves.
    let other = Policy {
        rates: Rates {
            memory: 0.5,
            health: 9.0,
            ..Rates::default()
        },
        ..Policy::default()
    };
    assert_eq!(moves_per_round(&busy_cpu, &sessions, &other, 2), [2, 2]);
    let hot_memory = [
        with_load(b("a", 40), None, Some(0.9), None),
        with_load(b("b", 0), None, Some(0.1), None),
    ];
    assert_eq!(
        moves_per_round(&hot_memory, &sessions, &Policy::default(), 2),
        [5, 5]
    );
    let mem = Policy {
        rates: Rates {
            memory: 1.5,
            ..Rates::default()
        },
        ..Policy::default()
    };
    assert_eq!(
        moves_per_round(&hot_memory, &sessions, &mem, 4),
        [1, 2, 1, 2]
    );
}

#[test]
fn conn_count_rate_and_threshold() {
    let list = [b("a", 30), b("b", 10)];
    let sessions = sessions_on("a", 0..30);
    // Built in: half the gap, capped at max-migrations-per-second (10).
    assert_eq!(
        moves_per_round(&list, &sessions, &Policy::default(), 1),
        [10]
    );
    let slow = Policy {
        rates: Rates {
            conn: 3.0,
            ..Rates::default()
        },
        ..Policy::default()
    };
    assert_eq!(moves_per_round(&list, &sessions, &slow, 2), [3, 3]);
    // 30 against 10 is a ratio of 3: a threshold of 3 or more leaves it alone.
    let tolerant = Policy {
        conn_count_ratio: 3.0,
        ..Policy::default()
    };
    assert_eq!(moves_per_round(&list, &sessions, &tolerant, 1), [0]);
}

#[test]
fn a_status_rate_paces_drains() {
    let mut down = b("a", 6);
    down.healthy = false;
    let list = [down, b("b", 0)];
    let sessions = sessions_on("a", 0..6);
    // Default: every session asked to leave at once.
    assert_eq!(
        moves_per_round(&list, &sessions, &Policy::default(), 1),
        [6]
    );
    let paced = Policy {
        rates: Rates {
            status: 2.5,
            ..Rates::default()
        },
        ..Policy::default()
    };
    // The sessions did not act on it (nothing moves them here), so each round asks again.
    assert_eq!(moves_per_round(&list, &sessions, &paced, 4), [2, 3, 2, 3]);
}
