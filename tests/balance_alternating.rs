//! Two minutes of load that alternates between two TiDBs, end to end: real MariaDB servers
//! hold the sessions, each paired with a scripted TiDB status port whose CPU and memory the
//! test changes every 15 s, discovered through PD's topology in a real etcd. The proxy runs
//! with TiProxy's per-factor rates set low (`[balance.cpu]` 0.5 and `[balance.memory]` 0.25
//! sessions a second). Checked: a busy TiDB sheds and the idle one gains; no phase moves more
//! than its factor's rate allows; and no session goes back and forth faster than the 30 s
//! hold, nor do sessions flow back along a pair within it. Every bound is on counts; the
//! only clock readings are the test's own, used as upper bounds on how fast things moved.

mod common;

use common::mariadb::MariaDb;
use common::pd::{wait_for, Etcd, Proxy};
use common::tidb_metrics::{moves_for, proxy_metrics, register, TidbStatus};
use mysql_async::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SESSIONS: usize = 32;
const PHASE: Duration = Duration::from_secs(15);
const CPU_RATE: f64 = 0.5;
const MEMORY_RATE: f64 = 0.25;
/// The proxy's hold on a moved session and on the reverse direction of a pair.
const HOLD: Duration = Duration::from_secs(30);
/// A move is asked at one moment and made at the session's next statement; two moves of one
/// session may land this much closer together than they were asked.
const MOVE_SLACK: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pressure {
    Cpu,
    Memory,
}

/// One observed move: the session, from and to (backend ports), and the poll that saw it
/// together with the poll before it (the move happened between the two).
#[derive(Debug, Clone)]
struct Seen {
    session: usize,
    from: u16,
    to: u16,
    before: Instant,
    at: Instant,
}

async fn ports(sessions: &mut [mysql_async::Conn]) -> Vec<u16> {
    let mut out = Vec::with_capacity(sessions.len());
    for c in sessions.iter_mut() {
        let p: Option<u16> =
            tokio::time::timeout(Duration::from_secs(10), c.query_first("SELECT @@port"))
                .await
                .expect("a held session answers")
                .expect("a held session answers");
        out.push(p.unwrap_or(0));
    }
    out
}

fn count(ports: &[u16], port: u16) -> usize {
    ports.iter().filter(|p| **p == port).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_load_sheds_at_the_configured_rates_without_ping_pong() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let dbs = MariaDb::start_many(2);
    for db in &dbs {
        db.sql(
            "CREATE USER 'svc'@'%' IDENTIFIED BY 'svcpass'; GRANT SELECT ON mysql.* TO 'svc'@'%'",
        );
    }
    let (a, b) = (&dbs[0], &dbs[1]);
    let sa = TidbStatus::start(0.1).await;
    let sb = TidbStatus::start(0.1).await;
    register(&mut kv, &a.addr(), sa.port, "z1").await;
    register(&mut kv, &b.addr(), sb.port, "z1").await;
    let proxy = Proxy::start(
        &format!(
            "pd-addrs = \"{}\"\n[proxy.service-account]\nuser = \"svc\"\npassword = \"svcpass\"",
            etcd.endpoint()
        ),
        &format!(
            "[balance.cpu]\nmigrations-per-second = {CPU_RATE}\n\
             [balance.memory]\nmigrations-per-second = {MEMORY_RATE}\n"
        ),
    )
    .await;
    let both = [a.addr(), b.addr()];
    wait_for(
        "both TiDBs to have a CPU score",
        Duration::from_secs(30),
        || async {
            let m = proxy_metrics(proxy.api_port).await;
            both.iter()
                .all(|addr| {
                    m.contains(&format!(
                        "tiproxy_balance_b_score{{backend=\"{addr}\",factor=\"cpu\"}}"
                    ))
                })
                .then_some(())
        },
    )
    .await;

    let opts =
        mysql_async::Opts::from_url(&format!("{}?prefer_socket=false", proxy.url())).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(
            mysql_async::Conn::new(opts.clone())
                .await
                .expect("session through the proxy"),
        );
    }
    let mut last = ports(&mut sessions).await;
    let start_a = count(&last, a.port());
    assert!(
        start_a >= SESSIONS / 4 && count(&last, b.port()) >= SESSIONS / 4,
        "sessions split over both: {last:?}"
    );
    let mut last_at = Instant::now();

    // A, B, A, B... each 15 s; every third busy spell is memory rather than CPU.
    let plan = [
        Pressure::Cpu,
        Pressure::Cpu,
        Pressure::Memory,
        Pressure::Cpu,
        Pressure::Cpu,
        Pressure::Memory,
        Pressure::Cpu,
        Pressure::Cpu,
    ];
    let mut seen: Vec<Seen> = Vec::new();
    let mut report = Vec::new();
    let mut after_first_phase = None;
    for (i, pressure) in plan.iter().enumerate() {
        let (busy, idle, busy_port) = if i % 2 == 0 {
            (&sa, &sb, a.port())
        } else {
            (&sb, &sa, b.port())
        };
        match pressure {
            Pressure::Cpu => {
                busy.set_usage(0.95);
                busy.set_memory(0.3);
            }
            Pressure::Memory => {
                busy.set_usage(0.05);
                busy.set_memory(0.9);
            }
        }
        idle.set_usage(0.05);
        idle.set_memory(0.3);
        let m0 = proxy_metrics(proxy.api_port).await;
        let t0 = Instant::now();
        let mut phase_moves = 0;
        for _ in 0..PHASE.as_secs() * 2 {
            if t0.elapsed() >= PHASE {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = ports(&mut sessions).await;
            let at = Instant::now();
            for (s, (old, new)) in last.iter().zip(&now).enumerate() {
                if old != new {
                    phase_moves += 1;
                    seen.push(Seen {
                        session: s,
                        from: *old,
                        to: *new,
                        before: last_at,
                        at,
                    });
                }
            }
            last = now;
            last_at = at;
        }
        let m1 = proxy_metrics(proxy.api_port).await;
        let took = t0.elapsed();
        // Moves asked just before the phase may complete in it: a few seconds and two moves
        // of slack, far below what the built-in rates (2 and 5 a second) would do.
        for (reason, rate) in [("cpu", CPU_RATE), ("memory", MEMORY_RATE)] {
            let done = moves_for(&m1, reason) - moves_for(&m0, reason);
            let allowed = rate * (took.as_secs_f64() + 3.0) + 2.0;
            assert!(
                done <= allowed,
                "phase {i}: {done} {reason} moves in {took:?}, more than {allowed} at {rate}/s"
            );
        }
        report.push(format!(
            "phase {i} ({pressure:?} on {busy_port}): {phase_moves} moves seen, a {} b {}",
            count(&last, a.port()),
            count(&last, b.port())
        ));
        if i == 0 {
            after_first_phase = Some(last.clone());
        }
    }
    let report = report.join("\n");
    eprintln!("{report}");

    // The first busy TiDB shed sessions and the idle one gained them, at the CPU rate: slower
    // than all at once (the built-in 2 a second would have moved all of them).
    let first = after_first_phase.unwrap();
    let shed = start_a - count(&first, a.port());
    assert!(shed >= 1, "the busy TiDB shed nothing:\n{report}");
    assert!(
        shed < start_a,
        "0.5 a second cannot empty {start_a} sessions in one phase:\n{report}"
    );
    assert_eq!(count(&first, b.port()), SESSIONS - count(&first, a.port()));
    let m = proxy_metrics(proxy.api_port).await;
    assert!(moves_for(&m, "cpu") >= 1.0, "cpu moves are counted:\n{m}");
    assert!(
        moves_for(&m, "memory") >= 1.0,
        "memory pressure moved sessions too:\n{report}\n{m}"
    );

    // No ping-pong. Per session: two moves at least the hold apart (measured generously: from
    // the poll before the first to the poll that saw the second).
    let mut per_session: HashMap<usize, Vec<&Seen>> = HashMap::new();
    for s in &seen {
        per_session.entry(s.session).or_default().push(s);
    }
    let max_moves = 1 + (plan.len() as u64 * PHASE.as_secs()) / (HOLD - MOVE_SLACK).as_secs();
    for (id, moves) in &per_session {
        assert!(
            moves.len() as u64 <= max_moves,
            "session {id} moved {} times: {moves:?}",
            moves.len()
        );
        for w in moves.windows(2) {
            let most = w[1].at.duration_since(w[0].before);
            assert!(
                most + MOVE_SLACK >= HOLD,
                "session {id} moved twice within {most:?}: {w:?}"
            );
        }
    }
    // Per pair: once sessions flowed A->B, none flowed B->A within the hold.
    for x in &seen {
        for y in &seen {
            if y.from == x.to && y.to == x.from && y.at > x.at {
                let most = y.at.duration_since(x.before);
                assert!(
                    most + MOVE_SLACK >= HOLD,
                    "{}->{} then back within {most:?}: {x:?} {y:?}",
                    x.from,
                    x.to
                );
            }
        }
    }
    let a_to_b = seen.iter().filter(|s| s.from == a.port()).count();
    let b_to_a = seen.iter().filter(|s| s.from == b.port()).count();
    eprintln!(
        "moves a->b {a_to_b}, b->a {b_to_a}, sessions moved {} of {SESSIONS}; proxy counted cpu {} memory {} conn {}",
        per_session.len(),
        moves_for(&m, "cpu"),
        moves_for(&m, "memory"),
        moves_for(&m, "conn")
    );
    for c in sessions {
        let _ = c.disconnect().await;
    }
}
