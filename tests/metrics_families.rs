//! Every metric family TiProxy's Grafana dashboard queries (COMPAT.md's "Metric names", plus
//! what packaging/grafana/tiproxy.json queries) is served by a live proxy, and the ones this
//! scenario exercises have moved: queries and a failed one, a rejected connection, a session
//! that ends, a backend that refuses to be dialled, and sessions moved off a backend put in
//! fail-backend-list.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// (family, must have moved in this scenario)
const FAMILIES: &[(&str, bool)] = &[
    ("server_connections", true),
    ("server_create_connection_total", true),
    ("server_maxprocs", true),
    ("server_reject_connection_total", true),
    ("server_disconnection_total", true),
    // Counts panics: present from the start, and it had better stay at zero here.
    ("server_err", false),
    ("session_query_total", true),
    ("session_query_duration_seconds", true),
    // Not in COMPAT.md's list, but our packaging/grafana/tiproxy.json queries it.
    ("session_query_error_total", true),
    ("session_handshake_duration_seconds", true),
    ("session_conn_lifetime_seconds", true),
    ("backend_b_status", true),
    ("backend_get_backend", true),
    ("backend_dial_backend_fail", true),
    ("backend_health_check_seconds", true),
    ("balance_b_conn", true),
    ("balance_migrate_total", true),
    ("balance_migrate_duration_seconds", true),
    ("traffic_inbound_bytes", true),
    ("traffic_outbound_bytes", true),
    ("traffic_inbound_packets", true),
    ("traffic_outbound_packets", true),
    // TiProxy's dashboard and alert rules (our reading of them, issue 18).
    ("traffic_cross_location_bytes", false),
    ("backend_get_backend_duration_seconds", true),
    ("backend_ping_duration_seconds", true),
    ("balance_pending_migrate", true),
    // TiProxy's alert: fires on any increase; zero here.
    ("monitor_time_jump_back_total", false),
    ("monitor_keep_alive_total", true),
    ("server_event", true),
    ("session_query_time_since_conn_creation_seconds", true),
];

/// Families TiProxy's dashboard queries without the `tiproxy_` prefix (our reading of its
/// panels): the Go runtime's, served here with this process's nearest figures, and the
/// process collector's. (family, must be above zero): each must have a series; the process
/// collector counts CPU in whole seconds, which a short test may not reach.
const UNPREFIXED: &[(&str, bool)] = &[
    ("go_goroutines", true),
    ("go_memory_classes_heap_objects_bytes", true),
    ("process_cpu_seconds_total", false),
    ("process_resident_memory_bytes", true),
    ("process_start_time_seconds", true),
];

/// Labels TiProxy's panels group or filter by, per family: each must be on some series.
const LABELS: &[(&str, &[&str])] = &[
    ("session_query_total", &["backend", "cmd_type"]),
    (
        "session_query_duration_seconds",
        &["backend", "cmd_type", "le"],
    ),
    ("server_disconnection_total", &["type"]),
    (
        "balance_migrate_total",
        &["from", "to", "reason", "migrate_res"],
    ),
    ("balance_pending_migrate", &["from", "to", "reason"]),
    ("backend_ping_duration_seconds", &["backend"]),
    ("backend_dial_backend_fail", &["backend"]),
    ("backend_get_backend", &["res"]),
    ("balance_b_conn", &["backend"]),
    ("traffic_inbound_bytes", &["backend"]),
    ("traffic_outbound_bytes", &["backend"]),
    ("traffic_inbound_packets", &["backend"]),
    ("traffic_outbound_packets", &["backend"]),
    ("server_event", &["type"]),
];

/// Families TiProxy's dashboard queries that have no series here on purpose, and why.
pub const ABSENT_BY_DESIGN: &[(&str, &str)] = &[(
    "server_owner",
    "TiProxy elects owners among its instances (VIP, backend-metrics reader); every proxy here \
     does its own work, so it owns nothing, as a TiProxy that lost every election",
)];

#[test]
fn the_list_covers_our_grafana_dashboard() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana/tiproxy.json"
    );
    let dashboard = std::fs::read_to_string(path).unwrap();
    for (at, _) in dashboard.match_indices("tiproxy_") {
        let name: String = dashboard[at + "tiproxy_".len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            FAMILIES.iter().any(|(f, _)| *f == family),
            "the dashboard queries tiproxy_{family}, which this test does not check"
        );
    }
}

fn scrape(api_port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Series count and value sum per family (a histogram counts by its `_count` series).
fn families(text: &str) -> HashMap<String, (usize, f64)> {
    let mut out: HashMap<String, (usize, f64)> = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("tiproxy_")) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line["tiproxy_".len()..name_end];
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let (family, counts) = match name.strip_suffix("_count") {
            Some(f) => (f, true),
            None => match name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
            {
                Some(f) => (f, false),
                None => (name, true),
            },
        };
        let e = out.entry(family.to_owned()).or_default();
        e.0 += 1;
        if counts {
            e.1 += value;
        }
    }
    out
}

fn login(proxy: &Proxy) -> Option<RawConn> {
    RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).ok()
}

#[test]
fn every_dashboard_family_is_served_and_moves() {
    let dbs = MariaDb::start_many(2);
    // A third backend nobody listens on; slow probes leave it a candidate, so sessions that
    // pick it fail to dial it and go elsewhere.
    let dead = format!("127.0.0.1:{}", common::net::free_port());
    let mut cfg = ProxyConfig::new(vec![dbs[0].addr(), dbs[1].addr(), dead]);
    cfg.max_connections = 4;
    cfg.health_interval_ms = 600_000;
    cfg.failure_threshold = 100;
    cfg.failover_timeout = 10;
    let proxy = Proxy::start(&cfg);

    let mut sessions: Vec<RawConn> = (0..4)
        .map(|_| {
            poll_until(Duration::from_secs(10), || login(&proxy))
                .expect("a session under the limit")
        })
        .collect();
    for s in &mut sessions {
        for _ in 0..3 {
            assert_eq!(s.query_value("SELECT 1").as_deref(), Some("1"));
        }
    }
    assert!(sessions[0].query("SELECT * FROM no_such_table").is_err());
    assert!(login(&proxy).is_none(), "a fifth session is refused");
    // One session ends: its lifetime and how it ended are counted.
    sessions.pop();

    // Open transactions hold the moves below pending until they commit.
    for s in &mut sessions {
        s.query("BEGIN").unwrap();
    }
    // Move every session off the first backend.
    cfg.fail_backend_list = vec![dbs[0].addr()];
    proxy.rewrite_config(&cfg);
    let pending = poll_until(Duration::from_secs(8), || {
        let f = families(&scrape(proxy.api_port()));
        (f.get("balance_pending_migrate").map_or(0.0, |e| e.1) > 0.0).then_some(())
    });
    for s in &mut sessions {
        s.query("COMMIT").unwrap();
    }
    assert!(pending.is_some(), "no pending migration was ever shown");
    let moved = poll_until(Duration::from_secs(30), || {
        let f = families(&scrape(proxy.api_port()));
        (f.get("balance_migrate_total").map_or(0.0, |e| e.1) > 0.0).then_some(())
    });
    for s in &mut sessions {
        assert_eq!(s.query_value("SELECT 2").as_deref(), Some("2"));
    }

    let text = scrape(proxy.api_port());
    let got = families(&text);
    let mut missing = Vec::new();
    let mut still = Vec::new();
    for (family, moves) in FAMILIES {
        match got.get(*family) {
            None => missing.push(*family),
            Some((_, sum)) if *moves && *sum <= 0.0 => still.push(*family),
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "families with no series: {missing:?}\n{text}"
    );
    assert!(
        still.is_empty(),
        "families that did not move: {still:?} (migration seen: {})\n{text}",
        moved.is_some()
    );
    assert_eq!(got["server_err"].1, 0.0, "a panic was counted:\n{text}");
    for (family, labels) in LABELS {
        let prefix = format!("tiproxy_{family}");
        for label in *labels {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&prefix) && l.contains(&format!("{label}=\""))),
                "tiproxy_{family} has no series with the label {label}"
            );
        }
    }
    // TiProxy's command names, which its "QPS by command" panel shows.
    assert!(
        text.contains("cmd_type=\"Query\""),
        "cmd_type values are not TiProxy's:\n{text}"
    );
    // TiProxy's quit sources, which its "Disconnection OPM" panel shows by type; the session
    // that ended above counts in one of the client's.
    let ended: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("tiproxy_server_disconnection_total{type=\"success\"}")
                || l.starts_with(
                    "tiproxy_server_disconnection_total{type=\"client network break\"}",
                )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        ended >= 1.0,
        "disconnection types are not TiProxy's:\n{text}"
    );
    for (family, _) in ABSENT_BY_DESIGN {
        assert!(!got.contains_key(*family), "{family} now has series");
    }
    for (family, positive) in UNPREFIXED {
        let value = text
            .lines()
            .find(|l| l.starts_with(&format!("{family} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert!(
            value.is_some_and(|v| v > 0.0 || (!positive && v == 0.0)),
            "{family} has no series (above zero: {positive}):\n{text}"
        );
    }
}
