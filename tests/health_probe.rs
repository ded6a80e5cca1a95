//! The health probe and the early-dial sign-off leave no trace on a MariaDB at its default
//! settings when a service account is configured: no line in its error log and no failed-login
//! or aborted-connection count, only `Connections` moves.

mod common;

use common::mariadb::MariaDb;
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

const COUNTERS: &str = "SHOW GLOBAL STATUS WHERE Variable_name LIKE 'Aborted%' \
    OR Variable_name LIKE 'Connection_errors%' \
    OR Variable_name IN ('Connections', 'Access_denied_errors')";

fn counters(db: &MariaDb) -> HashMap<String, i64> {
    db.sql(COUNTERS)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_owned(), v.trim().parse().unwrap_or(0)))
        .collect()
}

fn moved(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut d: Vec<(String, i64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d != 0)
        .collect();
    d.sort();
    d
}

/// Lines a probe or an abandoned handshake would add.
fn probe_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("Aborted connection")
                || l.contains("Access denied")
                || l.contains("tiproxy_health_probe")
        })
        .collect()
}

#[test]
fn probes_and_early_dial_sign_offs_leave_no_trace_with_a_service_account() {
    let db = MariaDb::start();
    db.sql(
        "CREATE USER 'tiproxy_svc'@'%' IDENTIFIED BY 'svc-pw'; \
         GRANT SELECT ON mysql.* TO 'tiproxy_svc'@'%'",
    );
    let log_before = db.error_log();
    let before = counters(&db);
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.health_interval_ms = 200;
    cfg.service_account = Some(("tiproxy_svc".into(), "svc-pw".into()));
    let proxy = Proxy::start(&cfg);
    // Clients that leave before logging in: the backend connection dialed for each is signed off.
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut greeting = [0u8; 4];
        s.read_exact(&mut greeting).unwrap();
    }
    // At least 20 probes and the 5 sign-offs; each reading of the counters is a connection too.
    let mut reads = 0;
    let enough = poll_until(Duration::from_secs(60), || {
        let now = counters(&db);
        reads += 1;
        (now["Connections"] - before["Connections"] - reads >= 25).then_some(now)
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = counters(&db);
    assert!(
        enough.is_some(),
        "too few probes: {:?}",
        moved(&before, &after)
    );
    let delta = moved(&before, &after);
    assert!(
        delta.iter().all(|(k, _)| k == "Connections"),
        "server counters other than Connections moved: {delta:?}"
    );
    let log = db.error_log();
    let new = &log[log_before.len()..];
    assert!(
        probe_lines(new).is_empty(),
        "the probes left lines in MariaDB's error log:\n{new}"
    );
    drop(proxy);
}

/// Without a service account nothing lets the probe log in; it ends with "access denied"
/// (a warning each) rather than hanging up, which MariaDB counts towards max_connect_errors.
#[test]
fn without_a_service_account_probes_never_count_towards_host_blocking() {
    let db = MariaDb::start();
    let before = counters(&db);
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.health_interval_ms = 200;
    let proxy = Proxy::start(&cfg);
    let done = poll_until(Duration::from_secs(60), || {
        let now = counters(&db);
        (now["Access_denied_errors"] - before["Access_denied_errors"] >= 10).then_some(())
    });
    let after = counters(&db);
    assert!(
        done.is_some(),
        "too few probes: {:?}",
        moved(&before, &after)
    );
    let delta: HashMap<String, i64> = moved(&before, &after).into_iter().collect();
    assert_eq!(
        delta.get("Aborted_connects_preauth"),
        None,
        "a probe hung up before authenticating: {delta:?}"
    );
    assert!(
        delta.get("Access_denied_errors").copied().unwrap_or(0) >= 10,
        "{delta:?}"
    );
    drop(proxy);
}
