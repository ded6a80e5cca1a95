//! Session migration on real MariaDB servers: state survives a requested move, an imbalance
//! move and a SIGKILLed backend; a transaction is never split; a drained backend's idle
//! sessions all leave with zero client errors.

mod common;

use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::io::{Read, Write};
use std::time::Duration;

const SVC_USER: &str = "svc";
const SVC_PASS: &str = "svcpass";

fn prepare_backends(dbs: &[MariaDb]) {
    for db in dbs {
        db.sql(&format!(
            "CREATE USER '{SVC_USER}'@'%' IDENTIFIED BY '{SVC_PASS}'; \
             GRANT SELECT ON mysql.* TO '{SVC_USER}'@'%'; \
             CREATE TABLE test.t (id INT PRIMARY KEY, v INT)"
        ));
    }
}

fn config(backends: Vec<String>) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(backends);
    cfg.service_account = Some((SVC_USER.into(), SVC_PASS.into()));
    cfg.health_interval_ms = 300;
    cfg
}

async fn connect(port: u16) -> Conn {
    Conn::new(builder(port, APP_USER, APP_PASS).db_name(None::<String>))
        .await
        .expect("connect through the proxy")
}

async fn port_of(conn: &mut Conn) -> u16 {
    conn.query_first("SELECT @@port").await.unwrap().unwrap()
}

/// A bare HTTP/1.0 request to the status port; returns the whole response.
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

/// Two prepared backends, the proxy over both, and one session through it.
async fn two_backends_one_session() -> (Vec<MariaDb>, Proxy, Conn) {
    let dbs = MariaDb::start_many(2);
    prepare_backends(&dbs);
    let proxy = Proxy::start(&config(vec![dbs[0].addr(), dbs[1].addr()]));
    let conn = connect(proxy.port()).await;
    (dbs, proxy, conn)
}

/// Gives the session state of every kind the issue names.
async fn give_state(conn: &mut Conn) -> mysql_async::Statement {
    conn.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_TRANS_TABLES'")
        .await
        .unwrap();
    conn.query_drop("SET @v = 42").await.unwrap();
    conn.query_drop("USE test").await.unwrap();
    conn.query_drop("PREPARE sp FROM 'SELECT ? + 1'")
        .await
        .unwrap();
    conn.prep("SELECT ? * 2").await.unwrap()
}

async fn assert_state(conn: &mut Conn, stmt: &mysql_async::Statement) {
    let mode: String = conn
        .query_first("SELECT @@sql_mode")
        .await
        .unwrap()
        .unwrap();
    assert!(mode.contains("ANSI_QUOTES"), "sql_mode lost: {mode}");
    let v: i64 = conn.query_first("SELECT @v").await.unwrap().unwrap();
    assert_eq!(v, 42, "user variable lost");
    let db: String = conn
        .query_first("SELECT DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db, "test", "current database lost");
    let sp: i64 = conn
        .query_first("EXECUTE sp USING @v")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sp, 43, "SQL prepared statement lost");
    let bin: i64 = conn.exec_first(stmt, (21,)).await.unwrap().unwrap();
    assert_eq!(bin, 42, "binary prepared statement lost");
}

/// Polls with a query until the session reports `want` as its port (bounded: 80 x 250 ms).
async fn wait_for_port(conn: &mut Conn, want: u16) -> bool {
    for _ in 0..80 {
        if port_of(conn).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test]
async fn requested_move_keeps_every_kind_of_state() {
    let (dbs, proxy, mut conn) = two_backends_one_session().await;
    let from = port_of(&mut conn).await;
    let to = if from == dbs[0].port() {
        dbs[1].port()
    } else {
        dbs[0].port()
    };
    let stmt = give_state(&mut conn).await;
    let resp = http(
        proxy.api_port(),
        "POST",
        &format!("/api/admin/migrate?from=127.0.0.1:{from}"),
    );
    assert!(resp.contains("\"requested\":1"), "{resp}");
    assert!(
        wait_for_port(&mut conn, to).await,
        "session never moved:\n{}",
        proxy.log()
    );
    assert_state(&mut conn, &stmt).await;
    assert!(proxy.log().contains("session moved"), "{}", proxy.log());
    let metrics = http(proxy.api_port(), "GET", "/api/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tiproxy_balance_migrate_total")
                && l.contains("reason=\"api\"")
                && l.contains("migrate_res=\"succeed\"")),
        "no migrate metric"
    );
}

#[tokio::test]
async fn transaction_in_flight_is_never_split() {
    let (dbs, proxy, mut conn) = two_backends_one_session().await;
    let from = port_of(&mut conn).await;
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO test.t VALUES (1, 1)")
        .await
        .unwrap();
    http(
        proxy.api_port(),
        "POST",
        &format!("/api/admin/migrate?from=127.0.0.1:{from}"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(port_of(&mut conn).await, from, "moved inside a transaction");
    conn.query_drop("INSERT INTO test.t VALUES (2, 2)")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    let origin = dbs.iter().find(|d| d.port() == from).unwrap();
    assert_eq!(
        origin.sql("SELECT COUNT(*) FROM test.t"),
        "2",
        "transaction split"
    );
    let to = dbs.iter().find(|d| d.port() != from).unwrap().port();
    assert!(
        wait_for_port(&mut conn, to).await,
        "session never moved after COMMIT"
    );
}

#[tokio::test]
async fn begin_while_a_move_is_pending_commits_then_moves() {
    let (dbs, proxy, mut conn) = two_backends_one_session().await;
    let from = port_of(&mut conn).await;
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO test.t VALUES (1, 1)")
        .await
        .unwrap();
    http(
        proxy.api_port(),
        "POST",
        &format!("/api/admin/migrate?from=127.0.0.1:{from}"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // BEGIN commits the open transaction implicitly; the proxy commits it, moves, then begins
    conn.query_drop("BEGIN").await.unwrap();
    let now = port_of(&mut conn).await;
    assert_ne!(now, from, "BEGIN did not move the session");
    conn.query_drop("COMMIT").await.unwrap();
    let origin = dbs.iter().find(|d| d.port() == from).unwrap();
    assert_eq!(
        origin.sql("SELECT COUNT(*) FROM test.t"),
        "1",
        "first transaction lost"
    );
}

#[tokio::test]
async fn killed_backend_is_invisible_to_an_idle_session() {
    let (mut dbs, proxy, mut conn) = two_backends_one_session().await;
    let from = port_of(&mut conn).await;
    let stmt = give_state(&mut conn).await;
    let victim = dbs.iter().position(|d| d.port() == from).unwrap();
    let survivor = dbs[1 - victim].port();
    dbs[victim].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(port_of(&mut conn).await, survivor, "{}", proxy.log());
    assert_state(&mut conn, &stmt).await;
}

#[tokio::test]
async fn killed_backend_in_a_transaction_reports_rollback_and_the_session_goes_on() {
    let (mut dbs, _proxy, mut conn) = two_backends_one_session().await;
    let from = port_of(&mut conn).await;
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO test.t VALUES (1, 1)")
        .await
        .unwrap();
    let victim = dbs.iter().position(|d| d.port() == from).unwrap();
    let survivor = dbs[1 - victim].port();
    dbs[victim].kill();
    let err = conn
        .query_drop("INSERT INTO test.t VALUES (2, 2)")
        .await
        .expect_err("the transaction's backend is gone");
    let text = err.to_string();
    assert!(
        text.contains("1927") && text.contains("rolled back"),
        "{text}"
    );
    match &err {
        mysql_async::Error::Server(e) => assert_eq!(e.state, "40001", "{e:?}"),
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(!text.contains("econnect"), "the session goes on: {text}");
    assert_eq!(port_of(&mut conn).await, survivor);
}

#[tokio::test]
async fn forty_idle_sessions_leave_a_drained_backend_without_errors() {
    let dbs = MariaDb::start_many(2);
    prepare_backends(&dbs);
    let mut cfg = config(vec![dbs[0].addr(), dbs[1].addr()]);
    let proxy = Proxy::start(&cfg);
    let mut conns = Vec::new();
    for _ in 0..40 {
        let mut c = connect(proxy.port()).await;
        c.query_drop("SET @x = 1").await.unwrap();
        conns.push(c);
    }
    let drained = dbs[0].port();
    cfg.fail_backend_list = vec![dbs[0].addr()];
    proxy.rewrite_config(&cfg);
    let mut moved = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let resp = http(proxy.api_port(), "GET", "/api/connections");
        if !resp.contains(&format!("127.0.0.1:{drained}")) {
            moved = true;
            break;
        }
    }
    assert!(
        moved,
        "sessions still on the drained backend:\n{}",
        proxy.log()
    );
    for c in &mut conns {
        assert_eq!(port_of(c).await, dbs[1].port());
        let x: i64 = c.query_first("SELECT @x").await.unwrap().unwrap();
        assert_eq!(x, 1);
    }
}

#[tokio::test]
async fn imbalance_moves_sessions_to_a_new_backend() {
    let dbs = MariaDb::start_many(2);
    prepare_backends(&dbs);
    let mut cfg = config(vec![dbs[0].addr()]);
    let proxy = Proxy::start(&cfg);
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(connect(proxy.port()).await);
    }
    cfg.backends = vec![dbs[0].addr(), dbs[1].addr()];
    proxy.rewrite_config(&cfg);
    let mut balanced = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut on_new = 0;
        for c in &mut conns {
            if port_of(c).await == dbs[1].port() {
                on_new += 1;
            }
        }
        if (4..=6).contains(&on_new) {
            balanced = true;
            break;
        }
    }
    assert!(balanced, "sessions never balanced:\n{}", proxy.log());
}

#[tokio::test]
async fn session_stuck_on_a_failed_backend_is_closed_with_1152() {
    let dbs = MariaDb::start_many(2);
    prepare_backends(&dbs);
    let mut cfg = config(vec![dbs[0].addr(), dbs[1].addr()]);
    let proxy = Proxy::start(&cfg);
    let mut conn = connect(proxy.port()).await;
    let on = port_of(&mut conn).await;
    conn.query_drop("BEGIN").await.unwrap();
    cfg.fail_backend_list = vec![format!("127.0.0.1:{on}")];
    cfg.failover_timeout = 1;
    proxy.rewrite_config(&cfg);
    // the open transaction pins the session; after failover-timeout the proxy gives up on it
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if proxy
            .log()
            .contains("closing session still on a fail-backend-list backend")
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "{}", proxy.log());
    let err = conn
        .query_drop("SELECT 1")
        .await
        .expect_err("the session was closed");
    let text = err.to_string();
    assert!(
        text.contains("1152") && text.contains("fail-backend-list"),
        "{text}"
    );
}

/// `/api/backends` body, parsed.
fn backends_json(api_port: u16) -> serde_json::Value {
    let resp = http(api_port, "GET", "/api/backends");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn blocked_on(v: &serde_json::Value, port: u16, why: &str) -> u64 {
    let addr = format!("127.0.0.1:{port}");
    v["backends"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["addr"] == addr.as_str()))
        .and_then(|b| b["blocked"][why].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_drain_reports_what_still_blocks_each_session() {
    let (dbs, proxy, mut temp) = two_backends_one_session().await;
    let mut txn = connect(proxy.port()).await;
    let (temp_on, txn_on) = (port_of(&mut temp).await, port_of(&mut txn).await);
    assert_ne!(
        temp_on, txn_on,
        "fewest-sessions routing spreads two sessions"
    );
    temp.query_drop("CREATE TEMPORARY TABLE test.scratch (id INT)")
        .await
        .unwrap();
    txn.query_drop("BEGIN").await.unwrap();
    txn.query_drop("INSERT INTO test.t VALUES (7, 7)")
        .await
        .unwrap();
    for from in [temp_on, txn_on] {
        http(
            proxy.api_port(),
            "POST",
            &format!("/api/admin/migrate?from=127.0.0.1:{from}"),
        );
    }
    let (temp_why, txn_why) = (
        "the session holds a temporary table",
        "waiting for its transaction to end",
    );
    let mut last = serde_json::Value::Null;
    let mut seen = false;
    for _ in 0..40 {
        last = backends_json(proxy.api_port());
        if blocked_on(&last, temp_on, temp_why) == 1 && blocked_on(&last, txn_on, txn_why) == 1 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(seen, "blocked sessions not reported: {last}");
    eprintln!("drain: /api/backends while blocked: {last}");
    // The transaction ends: that session moves and is no longer counted.
    txn.query_drop("COMMIT").await.unwrap();
    assert!(
        wait_for_port(&mut txn, temp_on).await,
        "never moved after COMMIT"
    );
    assert_eq!(
        blocked_on(&backends_json(proxy.api_port()), txn_on, txn_why),
        0
    );
    drop(dbs);
}

/// Each session's id and backend, from the API.
fn backends_of_sessions(api_port: u16) -> Vec<(u64, String)> {
    let resp = http(api_port, "GET", "/api/connections");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).expect("connections JSON");
    v["connections"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["id"].as_u64().expect("id"),
                c["backend"].as_str().expect("backend").to_owned(),
            )
        })
        .collect()
}

/// A session that ran only a ping and `SELECT 1` moves without the server's variables being
/// read (its login made all its state); one that called a function, which may set a variable
/// the proxy cannot see, has its state read from the server. Both keep their state.
#[test]
fn untouched_and_touched_sessions_both_keep_their_state_when_moved() {
    use common::raw::RawConn;
    let dbs = MariaDb::start_many(2);
    prepare_backends(&dbs);
    for db in &dbs {
        let mut c = RawConn::login(&db.addr(), APP_USER, APP_PASS, Some("test")).expect("login");
        c.query(
            "CREATE FUNCTION set_precision() RETURNS INT NOT DETERMINISTIC \
             BEGIN SET @@session.div_precision_increment = 7; RETURN 1; END",
        )
        .expect("create function");
    }
    let proxy = Proxy::start(&config(vec![dbs[0].addr(), dbs[1].addr()]));
    let addr = format!("127.0.0.1:{}", proxy.port());
    let mut untouched = RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("login");
    untouched.ping().expect("ping");
    untouched.query("SELECT 1").expect("SELECT 1");
    let mut touched = RawConn::login(&addr, APP_USER, APP_PASS, None).expect("login");
    touched
        .query("SELECT test.set_precision()")
        .expect("the function runs");
    let before = backends_of_sessions(proxy.api_port());
    assert_eq!(before.len(), 2, "{before:?}");
    for (id, _) in &before {
        let resp = http(
            proxy.api_port(),
            "POST",
            &format!("/api/admin/migrate?session={id}"),
        );
        assert!(resp.contains("\"requested\":1"), "{resp}");
    }
    let mut all_moved = false;
    for _ in 0..80 {
        let now = backends_of_sessions(proxy.api_port());
        if before
            .iter()
            .all(|(id, b)| now.iter().any(|(i, nb)| i == id && nb != b))
        {
            all_moved = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(all_moved, "sessions did not move:\n{}", proxy.log());
    assert_eq!(
        untouched.query_value("SELECT DATABASE()").as_deref(),
        Some("test")
    );
    assert_eq!(
        touched
            .query_value("SELECT @@div_precision_increment")
            .as_deref(),
        Some("7"),
        "a variable a function set was lost:\n{}",
        proxy.log()
    );
}
