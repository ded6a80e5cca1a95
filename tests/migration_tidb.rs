//! The TiDB migration path against a scripted TiDB that answers as the recordings of a real
//! tidb-server in tests/data/tidb/ do: SHOW SESSION_STATES on the old backend, a
//! `tidb_session_token` login on the new one (length-encoded: a one-byte length gets TiDB's
//! auth switch), SET SESSION_STATES with the documented escaping, and the session's state
//! (variables, database, prepared statements with their ids) intact afterwards.

mod common;

use common::client::builder;
use common::proxy::{Proxy, ProxyConfig};
use common::tidb::{ScriptedTidb, TidbEvent, TokenRegistry};
use common::wire::Io;
use mysql_async::prelude::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn http_post(port: u16, path: &str) -> String {
    http(port, "POST", path)
}

fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("status port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn recording(file: &str) -> Value {
    let path = format!("{}/tests/data/tidb/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("json")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}

fn registry() -> TokenRegistry {
    Arc::new(Mutex::new(Vec::new()))
}

async fn port_of(conn: &mut mysql_async::Conn) -> u16 {
    conn.query_first("SELECT @@port").await.unwrap().unwrap()
}

#[tokio::test]
async fn tidb_session_moves_with_its_token_and_states() {
    let tokens = registry();
    let a = ScriptedTidb::start("pw", tokens.clone());
    let b = ScriptedTidb::start("pw", tokens.clone());
    let proxy = Proxy::start(&ProxyConfig::new(vec![a.addr(), b.addr()]));
    let opts = builder(proxy.port(), "root", "pw").db_name(None::<String>);
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .expect("login through the proxy");
    let first = port_of(&mut conn).await;
    let (from, to) = if first == a.port() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    conn.query_drop("SET @x = 'it''s \\\\ here'").await.unwrap();
    conn.query_drop("USE db1").await.unwrap();
    // A binary prepared statement: after the move the client executes it by the same id.
    let before: i64 = conn.exec_first("SELECT ?*2", (5,)).await.unwrap().unwrap();
    assert_eq!(before, 10);
    let resp = http_post(
        proxy.api_port(),
        &format!("/api/admin/migrate?from={}", from.addr()),
    );
    assert!(resp.contains("\"requested\":1"), "{resp}");
    let mut moved = false;
    for _ in 0..40 {
        if port_of(&mut conn).await == to.port() {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(moved, "never moved:\n{}", proxy.log());
    let x: String = conn.query_first("SELECT @x").await.unwrap().unwrap();
    assert_eq!(x, "it's \\\\ here");
    let db: String = conn
        .query_first("SELECT DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db, "db1");
    let after: i64 = conn.exec_first("SELECT ?*2", (21,)).await.unwrap().unwrap();
    assert_eq!(after, 42);
    assert!(from
        .events()
        .contains(&TidbEvent::Query("SHOW SESSION_STATES".into())));
    let ev = to.events();
    assert!(
        ev.contains(&TidbEvent::Login {
            user: "root".into(),
            plugin: "tidb_session_token".into(),
            accepted: true
        }),
        "{ev:?}"
    );
    // Only a first login (the proxy names no plugin the server knows) may get an auth switch;
    // a token read with the wrong length garbles the plugin name and gets one too.
    assert!(
        !ev.iter().any(
            |e| matches!(e, TidbEvent::AuthSwitch { plugin } if plugin != "auth_unknown_plugin")
        ),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, TidbEvent::Query(q) if q.starts_with("SET SESSION_STATES '"))),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| matches!(e, TidbEvent::Execute(1))),
        "the statement was not executed by its id on the new TiDB: {ev:?}"
    );
    let log = proxy.log();
    assert!(
        log.contains("session moved") && log.contains("method=session-token"),
        "the move's method is not logged:\n{log}"
    );
    let metrics = http(proxy.api_port(), "GET", "/metrics");
    assert!(
        metrics.contains(
            "tiproxy_balance_migrate_method_total{method=\"session-token\",migrate_res=\"succeed\"} 1"
        ),
        "{metrics}"
    );
}

/// Replays a recording's client packets against the scripted TiDB and compares its answers
/// byte for byte (greetings: all but the connection id and salt; column definitions: skipped).
fn replay(tidb: &ScriptedTidb, file: &str) -> Vec<Vec<u8>> {
    let rec = recording(file);
    let tcp = std::net::TcpStream::connect(tidb.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut io = Io::new(tcp);
    let mut got = Vec::new();
    for p in rec["packets"].as_array().unwrap() {
        let bytes = unhex(p["hex"].as_str().unwrap());
        let label = p["label"].as_str().unwrap_or_default();
        if p["dir"] == "c2s" {
            io.seq = p["seq"].as_u64().unwrap() as u8;
            io.write(&bytes).unwrap();
            continue;
        }
        let answer = io
            .read()
            .unwrap_or_else(|e| panic!("{file}: no {label}: {e}"));
        if label.contains("handshake") || label == "greeting" {
            assert_eq!(answer.len(), bytes.len(), "{file}: greeting length");
            let at = 1 + answer[1..].iter().position(|&b| b == 0).unwrap() + 1;
            assert_eq!(answer[..at], bytes[..at], "{file}: server version");
            assert_eq!(
                answer[at + 12..at + 31],
                bytes[at + 12..at + 31],
                "{file}: capabilities, charset, status"
            );
            assert_eq!(answer[at + 43..], bytes[at + 43..], "{file}: plugin");
        } else if label.starts_with("AuthSwitchRequest") {
            assert_eq!(answer.len(), bytes.len(), "{file}: {label}");
            assert_eq!(answer[..22], bytes[..22], "{file}: {label}");
        } else if !label.starts_with("column definition") {
            assert_eq!(answer, bytes, "{file}: {label}");
        }
        got.push(answer);
    }
    got
}

#[test]
fn scripted_tidb_answers_as_the_recordings() {
    let tokens = registry();
    let tidb = ScriptedTidb::start("apppw", tokens.clone());
    let native = recording("login-native.json");
    tokens.lock().unwrap().push((
        native["session_token"].as_str().unwrap().to_owned(),
        Instant::now(),
    ));
    // The token written length-encoded: OK, state restored, statement 2 and s1 executable.
    replay(&tidb, "token-login.json");
    // The same token after a one-byte length: TiDB's auth switch.
    let got = replay(&tidb, "token-login-1byte.json");
    assert_eq!(got.last().unwrap()[0], 0xfe);
    replay(&tidb, "greeting.json");
    let mut waited = 0;
    while !tidb.events().contains(&TidbEvent::GreetingOnly) && waited < 100 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    let ev = tidb.events();
    assert!(ev.contains(&TidbEvent::GreetingOnly), "{ev:?}");
    assert!(
        ev.contains(&TidbEvent::Login {
            user: "app".into(),
            plugin: "tidb_session_token".into(),
            accepted: true
        }),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| matches!(e, TidbEvent::AuthSwitch { .. })),
        "{ev:?}"
    );
}

fn metric(port: u16, series: &str) -> u64 {
    http(port, "GET", "/metrics")
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Two static TiDBs with their status ports configured, `n` idle sessions through the proxy,
/// and which of them sit on `a`.
async fn tidb_pair(n: usize) -> (ScriptedTidb, ScriptedTidb, Proxy, Vec<mysql_async::Conn>) {
    let tokens = registry();
    let a = ScriptedTidb::start("pw", tokens.clone());
    let b = ScriptedTidb::start("pw", tokens.clone());
    let mut cfg = ProxyConfig::new(vec![a.addr(), b.addr()]);
    cfg.backend_status_addrs = vec![(a.addr(), a.status_addr()), (b.addr(), b.status_addr())];
    // Slow regular probes: the drain must be seen by the fast /status watcher.
    cfg.health_interval_ms = 3000;
    let proxy = Proxy::start(&cfg);
    let mut conns = Vec::new();
    for i in 0..n {
        let opts = builder(proxy.port(), "root", "pw").db_name(None::<String>);
        let mut c = mysql_async::Conn::new(opts).await.expect("login");
        c.query_drop(format!("SET @i = '{i}'")).await.unwrap();
        conns.push(c);
    }
    (a, b, proxy, conns)
}

/// A static TiDB's graceful shutdown (SIGTERM, graceful-wait-before-shutdown = 10, as recorded
/// in status.json): /status turns 500, the proxy moves every idle session while TiDB still
/// serves, and no session sees an error after TiDB closes its connections.
#[tokio::test]
async fn static_tidb_graceful_shutdown_moves_idle_sessions_before_tidb_closes_them() {
    let (mut a, b, proxy, mut conns) = tidb_pair(8).await;
    let mut on_a = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        if port_of(c).await == a.port() {
            on_a.push(i);
        }
    }
    assert!(!on_a.is_empty(), "no session on the TiDB to drain");
    let series =
        "tiproxy_balance_migrate_method_total{method=\"session-token\",migrate_res=\"succeed\"}";
    let started = Instant::now();
    a.sigterm(Duration::from_secs(10));
    let mut moved_after = None;
    for _ in 0..240 {
        if metric(proxy.api_port(), series) >= on_a.len() as u64 {
            moved_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{} idle sessions moved {:?} after SIGTERM",
        on_a.len(),
        moved_after
    );
    // Past TiDB's graceful wait: its connections are closed and its ports refuse.
    while started.elapsed() < Duration::from_secs(11) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let p: u16 = c
            .query_first("SELECT @@port")
            .await
            .unwrap_or_else(|e| panic!("session {i}: {e}\n{}", proxy.log()))
            .unwrap();
        assert_eq!(p, b.port(), "session {i}");
        let v: String = c.query_first("SELECT @i").await.unwrap().unwrap();
        assert_eq!(v, i.to_string(), "session {i} lost its variable");
    }
    let log = proxy.log();
    assert!(
        log.contains("TiDB is shutting down"),
        "the drain was not seen through /status:\n{log}"
    );
    assert!(moved_after.is_some(), "not every session moved:\n{log}");
}

/// kill -9 of a TiDB: its sessions cannot be rebuilt elsewhere (their state lived in it), and
/// the error says so instead of claiming no backend could take them while another is healthy.
#[tokio::test]
async fn after_a_tidb_crash_the_error_says_the_state_died_with_it() {
    let (a, b, proxy, mut conns) = tidb_pair(4).await;
    let mut on_a = Vec::new();
    for c in conns.iter_mut() {
        on_a.push(port_of(c).await == a.port());
    }
    assert!(on_a.iter().any(|x| *x), "no session on the TiDB to crash");
    a.crash();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (c, was_on_a) in conns.iter_mut().zip(&on_a) {
        let r: Result<Option<u16>, _> = c.query_first("SELECT @@port").await;
        if *was_on_a {
            let e = r
                .expect_err("a session of the crashed TiDB carried on")
                .to_string();
            assert!(
                e.contains("lived in that TiDB and cannot be rebuilt")
                    && e.contains("your statement was not run"),
                "{e}"
            );
            assert!(!e.contains("no other backend"), "{e}");
        } else {
            assert_eq!(r.unwrap(), Some(b.port()));
        }
    }
    drop(proxy);
}

/// The probe of a TiDB reads the greeting and hangs up (TiDB logs nothing for it), and asks
/// /status: no login attempt ever reaches TiDB from the probe.
#[tokio::test]
async fn tidb_probe_reads_only_the_greeting() {
    let (a, _b, proxy, _conns) = tidb_pair(0).await;
    let mut seen = false;
    for _ in 0..100 {
        if a.events()
            .iter()
            .filter(|e| **e == TidbEvent::GreetingOnly)
            .count()
            >= 2
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ev = a.events();
    assert!(seen, "{ev:?}");
    assert!(
        !ev.iter()
            .any(|e| matches!(e, TidbEvent::Login { .. } | TidbEvent::AuthSwitch { .. })),
        "the probe tried to log in: {ev:?}"
    );
    drop(proxy);
}

fn get_status(addr: &str) -> std::io::Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// The status port answers as recorded in status.json: 200 with TiDB's JSON, then the empty
/// 500 during the graceful wait while the SQL port still greets, then both ports refuse and an
/// idle connection is closed without a packet.
#[test]
fn scripted_tidb_status_port_as_recorded() {
    let rec = recording("status.json");
    let raw_500 = rec["sigterm"]["status_answers_distinct"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["answer"] == "HTTP 500")
        .map(|a| unhex(a["raw_hex"].as_str().unwrap()))
        .unwrap();
    let mut tidb = ScriptedTidb::start("pw", registry());
    assert_eq!(
        get_status(&tidb.status_addr()).unwrap(),
        unhex(rec["normal"]["raw_hex"].as_str().unwrap())
    );
    let idle = std::net::TcpStream::connect(tidb.addr()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut idle = Io::new(idle);
    idle.read().unwrap();
    tidb.sigterm(Duration::from_secs(2));
    assert_eq!(get_status(&tidb.status_addr()).unwrap(), raw_500);
    let mut greeted = Io::new(std::net::TcpStream::connect(tidb.addr()).unwrap());
    assert_eq!(
        greeted.read().unwrap()[0],
        10,
        "the SQL port greets during the wait"
    );
    // After the wait: the idle connection gets no packet, just the close.
    let e = idle.read().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    let mut refused = false;
    for _ in 0..50 {
        if get_status(&tidb.status_addr()).is_err()
            && std::net::TcpStream::connect(tidb.addr()).is_err()
        {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "the ports still accept after the graceful wait");
}
