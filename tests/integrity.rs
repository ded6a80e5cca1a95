//! Integrity under chaos, on three real MariaDB servers: concurrent clients run small
//! transactions that each write a pair of rows and bump a per-connection counter, recording
//! what the proxy told them; meanwhile sessions are moved every 250 ms, one backend is
//! SIGKILLed and restarted, one is removed from the configuration, and another is SIGKILLed
//! and restarted. Afterwards every transaction told "committed" has both rows on exactly one
//! backend, every one told "rolled back" or "not executed" has none, no pair is half-written,
//! the counters match the rows, and every session's state is what it set or it was told.

mod common;

use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const CLIENTS: u32 = 8;
const MAX_TXNS: u32 = 100_000;
const CLIENT_TIME: Duration = Duration::from_secs(22);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Committed,
    RolledBack,
    NotExecuted,
    Unknown,
}

#[derive(Debug, Default)]
struct Tally {
    told: BTreeMap<(u32, u32), Told>,
    errors: BTreeMap<String, u32>,
    state_checks: u32,
    state_lost: Vec<String>,
    unexplained: Vec<String>,
    reconnects: u32,
}

fn http(port: u16, method: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A new session with its state; a login can fail while the chaos leaves no healthy
/// backend for a moment, so it is tried a few times.
async fn session(port: u16, k: u32) -> Conn {
    let mut tries = 0;
    let mut c = loop {
        match Conn::new(builder(port, APP_USER, APP_PASS).db_name(Some("test"))).await {
            Ok(c) => break c,
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("client {k}: login failed ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("client {k} could not log in: {e}"),
        }
    };
    c.query_drop(format!(
        "SET @tag = 'client-{k}', time_zone = '+0{}:00'",
        k % 10
    ))
    .await
    .unwrap();
    c
}

/// Runs one transaction; on failure returns the step that failed and the error.
async fn transaction(c: &mut Conn, k: u32, n: u32) -> Result<(), (usize, mysql_async::Error)> {
    let steps = [
        "BEGIN".to_owned(),
        format!("INSERT INTO pairs VALUES ({k}, {n}, 'a')"),
        format!("INSERT INTO pairs VALUES ({k}, {n}, 'b')"),
        format!("INSERT INTO counters VALUES ({k}, 1) ON DUPLICATE KEY UPDATE c = c + 1"),
        "COMMIT".to_owned(),
    ];
    for (i, sql) in steps.iter().enumerate() {
        c.query_drop(sql).await.map_err(|e| (i, e))?;
    }
    Ok(())
}

async fn client(port: u16, k: u32) -> Tally {
    let mut t = Tally::default();
    let mut c = session(port, k).await;
    let started = Instant::now();
    for n in 0..MAX_TXNS {
        if started.elapsed() > CLIENT_TIME {
            break;
        }
        let told = match transaction(&mut c, k, n).await {
            Ok(()) => Told::Committed,
            Err((step, mysql_async::Error::Server(e))) => {
                *t.errors
                    .entry(format!("{} {}", e.code, e.state))
                    .or_default() += 1;
                let told = match (e.code, step) {
                    (1927, _) => Told::RolledBack,
                    (9004, 0) => Told::NotExecuted,
                    // BEGIN itself lost: nothing of this transaction ran.
                    (9003, 0) => Told::NotExecuted,
                    (9003, _) => Told::Unknown,
                    _ => {
                        t.unexplained
                            .push(format!("txn {k}/{n} step {step}: {e:?}"));
                        Told::Unknown
                    }
                };
                if !e.message.contains("continues on backend") {
                    drop(c);
                    c = session(port, k).await;
                    t.reconnects += 1;
                }
                told
            }
            Err((step, e)) => {
                t.unexplained.push(format!("txn {k}/{n} step {step}: {e}"));
                c = session(port, k).await;
                t.reconnects += 1;
                Told::Unknown
            }
        };
        t.told.insert((k, n), told);
        if n % 5 == 0 {
            t.state_checks += 1;
            let got: Result<Option<(String, String)>, _> =
                c.query_first("SELECT @tag, @@time_zone").await;
            let want = (format!("client-{k}"), format!("+0{}:00", k % 10));
            match got {
                Ok(Some(v)) if v == want => {}
                // The check itself met a failure and was told so: not a silent change. A
                // closed session is replaced (with its state set again) on the next round.
                Err(mysql_async::Error::Server(e)) if [9003, 9004, 1927].contains(&e.code) => {
                    *t.errors
                        .entry(format!("{} {}", e.code, e.state))
                        .or_default() += 1;
                    if !e.message.contains("continues on backend") {
                        c = session(port, k).await;
                        t.reconnects += 1;
                    }
                }
                other => t
                    .state_lost
                    .push(format!("client {k} after txn {n}: {other:?}")),
            }
        }
    }
    t
}

fn setup(db: &MariaDb) {
    db.sql(
        "CREATE USER 'svc'@'%' IDENTIFIED BY 'svcpass'; GRANT SELECT ON mysql.* TO 'svc'@'%'; \
         CREATE TABLE test.pairs (conn INT, n INT, side CHAR(1), PRIMARY KEY (conn, n, side)) \
         ENGINE=InnoDB; \
         CREATE TABLE test.counters (conn INT PRIMARY KEY, c INT) ENGINE=InnoDB",
    );
}

/// (conn, n) -> rows of the pair, and conn -> counter, on one backend.
fn contents(db: &MariaDb) -> (HashMap<(u32, u32), u32>, HashMap<u32, u32>) {
    let parse = |out: String| -> Vec<Vec<u32>> {
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(|v| v.parse().unwrap()).collect())
            .collect()
    };
    let pairs = parse(db.sql("SELECT conn, n, COUNT(*) FROM test.pairs GROUP BY conn, n"))
        .into_iter()
        .map(|r| ((r[0], r[1]), r[2]))
        .collect();
    let counters = parse(db.sql("SELECT conn, c FROM test.counters"))
        .into_iter()
        .map(|r| (r[0], r[1]))
        .collect();
    (pairs, counters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_is_told_the_truth_under_chaos() {
    let dbs = MariaDb::start_many(3);
    for db in &dbs {
        setup(db);
    }
    let addrs: Vec<String> = dbs.iter().map(|d| d.addr()).collect();
    let mut cfg = ProxyConfig::new(addrs.clone());
    cfg.service_account = Some(("svc".into(), "svcpass".into()));
    cfg.health_interval_ms = 300;
    let proxy = Proxy::start(&cfg);
    let (port, api) = (proxy.port(), proxy.api_port());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(client(port, k)))
        .collect();
    let chaos = tokio::task::spawn_blocking(move || {
        let mut dbs = dbs;
        let started = Instant::now();
        let mut storm = 0u32;
        let mut steps = vec![
            (4, "kill 2"),
            (8, "restart 2"),
            (11, "remove 1"),
            (14, "kill 0"),
            (17, "restart 0"),
        ];
        steps.reverse();
        while started.elapsed() < Duration::from_secs(20) {
            let from = &addrs[storm as usize % addrs.len()];
            http(api, "POST", &format!("/api/admin/migrate?from={from}"));
            storm += 1;
            if steps
                .last()
                .is_some_and(|(at, _)| started.elapsed() >= Duration::from_secs(*at))
            {
                let (_, what) = steps.pop().unwrap();
                eprintln!("chaos at {:?}: {what}", started.elapsed());
                match what {
                    "kill 2" => dbs[2].kill(),
                    "restart 2" => dbs[2].restart(),
                    "kill 0" => dbs[0].kill(),
                    "restart 0" => dbs[0].restart(),
                    _ => {
                        let mut c = cfg.clone();
                        c.backends = vec![addrs[0].clone(), addrs[2].clone()];
                        proxy.rewrite_config(&c);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (dbs, proxy, storm)
    });
    let mut tally = Tally::default();
    for c in clients {
        let t = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("a client hung")
            .unwrap();
        tally.told.extend(t.told);
        for (k, v) in t.errors {
            *tally.errors.entry(k).or_default() += v;
        }
        tally.state_checks += t.state_checks;
        tally.state_lost.extend(t.state_lost);
        tally.unexplained.extend(t.unexplained);
        tally.reconnects += t.reconnects;
    }
    let (dbs, proxy, storm) = chaos.await.unwrap();

    // What each backend holds.
    let mut where_: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    let mut counters: HashMap<u32, u32> = HashMap::new();
    let mut half_written = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let (pairs, cs) = contents(db);
        for (key, rows) in pairs {
            if rows != 2 {
                half_written.push((key, i, rows));
            }
            where_.entry(key).or_default().push(i);
        }
        for (k, c) in cs {
            *counters.entry(k).or_default() += c;
        }
    }
    let mut wrong = Vec::new();
    let mut unknown_committed = 0;
    let count = |told: Told| tally.told.values().filter(|t| **t == told).count();
    for (key, told) in &tally.told {
        let on = where_.get(key).map_or(0, Vec::len);
        match told {
            Told::Committed if on != 1 => wrong.push(format!("{key:?} committed, on {on}")),
            Told::RolledBack | Told::NotExecuted if on != 0 => {
                wrong.push(format!("{key:?} told {told:?}, on {on}"))
            }
            Told::Unknown if on > 1 => wrong.push(format!("{key:?} unknown, on {on}")),
            Told::Unknown if on == 1 => unknown_committed += 1,
            _ => {}
        }
    }
    let stray: Vec<_> = where_
        .keys()
        .filter(|k| !tally.told.contains_key(k))
        .collect();
    let mut counter_mismatch = Vec::new();
    for k in 0..CLIENTS {
        let rows = where_.keys().filter(|(c, _)| *c == k).count() as u32;
        let c = counters.get(&k).copied().unwrap_or(0);
        if rows != c {
            counter_mismatch.push((k, rows, c));
        }
    }
    let moves = proxy.log().matches("session moved").count();
    eprintln!(
        "integrity: {} transactions: {} committed, {} rolled back, {} not executed, {} unknown \
         ({} of those committed); errors {:?}; {} moves, {} migrate requests, {} reconnects; \
         {} state checks, {} lost",
        tally.told.len(),
        count(Told::Committed),
        count(Told::RolledBack),
        count(Told::NotExecuted),
        count(Told::Unknown),
        unknown_committed,
        tally.errors,
        moves,
        storm,
        tally.reconnects,
        tally.state_checks,
        tally.state_lost.len(),
    );
    assert!(wrong.is_empty(), "told one thing, found another: {wrong:?}");
    assert!(
        half_written.is_empty(),
        "half-written pairs: {half_written:?}"
    );
    assert!(
        stray.is_empty(),
        "rows of transactions nobody ran: {stray:?}"
    );
    assert!(
        counter_mismatch.is_empty(),
        "counters: {counter_mismatch:?}"
    );
    assert!(
        tally.state_lost.is_empty(),
        "state changed in silence: {:?}",
        tally.state_lost
    );
    assert!(tally.unexplained.is_empty(), "{:?}", tally.unexplained);
    assert!(count(Told::Committed) > 100, "the clients barely ran");
    assert!(moves > 0, "the storm moved nothing");
}
