//! A backend dies under a session, on real MariaDB servers: the client is told only what is
//! proven (rolled back, not executed, or outcome unknown), and the session goes on elsewhere
//! with all its state (the handshake's database, 10,000 SETs, prepared statements whose ids
//! differ on the new backend) or is closed with an error that says what could not be restored.

mod common;

use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::{Param, RawConn};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::time::Duration;

const SVC_USER: &str = "svc";
const SVC_PASS: &str = "svcpass";

fn setup() -> (Vec<MariaDb>, Proxy) {
    setup_n(2)
}

fn setup_n(n: usize) -> (Vec<MariaDb>, Proxy) {
    let dbs = MariaDb::start_many(n);
    for db in &dbs {
        db.sql(&format!(
            "CREATE USER '{SVC_USER}'@'%' IDENTIFIED BY '{SVC_PASS}'; \
             GRANT SELECT ON mysql.* TO '{SVC_USER}'@'%'; \
             CREATE TABLE test.t (id INT PRIMARY KEY, v INT)"
        ));
    }
    let mut cfg = ProxyConfig::new(dbs.iter().map(|d| d.addr()).collect());
    cfg.service_account = Some((SVC_USER.into(), SVC_PASS.into()));
    cfg.health_interval_ms = 300;
    let proxy = Proxy::start(&cfg);
    (dbs, proxy)
}

async fn connect(port: u16, db: Option<&str>) -> Conn {
    Conn::new(builder(port, APP_USER, APP_PASS).db_name(db.map(str::to_owned)))
        .await
        .expect("connect through the proxy")
}

async fn port_of(conn: &mut Conn) -> u16 {
    conn.query_first("SELECT @@port").await.unwrap().unwrap()
}

/// The index of the backend a session is on, and the other one's port.
fn victim_and_survivor(dbs: &[MariaDb], port: u16) -> (usize, u16) {
    let victim = dbs.iter().position(|d| d.port() == port).unwrap();
    (victim, dbs[1 - victim].port())
}

fn server_error(err: &mysql_async::Error) -> (u16, String, String) {
    match err {
        mysql_async::Error::Server(e) => (e.code, e.state.clone(), e.message.clone()),
        other => panic!("expected an error from the proxy, got {other:?}"),
    }
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_outcome_unknown_never_rolled_back() {
    let (mut dbs, proxy) = setup();
    let mut conn = connect(proxy.port(), None).await;
    let (victim, survivor) = victim_and_survivor(&dbs, port_of(&mut conn).await);
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO test.t VALUES (1, 1)")
        .await
        .unwrap();
    dbs[victim].kill();
    let err = conn
        .query_drop("COMMIT")
        .await
        .expect_err("the COMMIT's backend is gone");
    let (code, state, message) = server_error(&err);
    assert_eq!((code, state.as_str()), (9003, "08007"), "{message}");
    assert!(message.contains("unknown"), "{message}");
    assert!(!message.contains("rolled back"), "{message}");
    assert!(
        message.contains(&format!("continues on backend 127.0.0.1:{survivor}")),
        "{message}"
    );
    assert_eq!(port_of(&mut conn).await, survivor, "{}", proxy.log());
}

#[tokio::test]
async fn an_autocommit_write_in_flight_is_outcome_unknown() {
    let (mut dbs, proxy) = setup();
    let mut conn = connect(proxy.port(), None).await;
    let (victim, survivor) = victim_and_survivor(&dbs, port_of(&mut conn).await);
    let write = tokio::spawn(async move {
        let r = conn
            .query_drop("INSERT INTO test.t SELECT 7, SLEEP(30)")
            .await;
        (conn, r)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    dbs[victim].kill();
    let (mut conn, r) = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the client is answered")
        .unwrap();
    let (code, state, message) = server_error(&r.expect_err("backend gone"));
    assert_eq!((code, state.as_str()), (9003, "08007"), "{message}");
    assert_eq!(port_of(&mut conn).await, survivor, "{}", proxy.log());
}

#[tokio::test]
async fn a_statement_before_commit_is_rolled_back_with_a_retry_state() {
    let (mut dbs, _proxy) = setup();
    let mut conn = connect(_proxy.port(), None).await;
    let (victim, survivor) = victim_and_survivor(&dbs, port_of(&mut conn).await);
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("INSERT INTO test.t VALUES (1, 1)")
        .await
        .unwrap();
    dbs[victim].kill();
    let err = conn
        .query_drop("UPDATE test.t SET v = 2 WHERE id = 1")
        .await
        .expect_err("backend gone");
    let (code, state, message) = server_error(&err);
    assert_eq!((code, state.as_str()), (1927, "40001"), "{message}");
    assert!(message.contains("rolled back"), "{message}");
    assert!(!message.contains("econnect"), "{message}");
    assert_eq!(port_of(&mut conn).await, survivor);
    // Nothing of the transaction is anywhere; the survivor never saw it.
    let n: i64 = conn
        .query_first("SELECT COUNT(*) FROM test.t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_handshake_database_survives_a_rebuild() {
    let (mut dbs, proxy) = setup();
    let mut conn = connect(proxy.port(), Some("test")).await;
    let (victim, survivor) = victim_and_survivor(&dbs, port_of(&mut conn).await);
    dbs[victim].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(port_of(&mut conn).await, survivor, "{}", proxy.log());
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db.as_deref(), Some("test"), "{}", proxy.log());
    // An unqualified table name works: no 1046.
    let n: i64 = conn
        .query_first("SELECT COUNT(*) FROM t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn ten_thousand_sets_survive_a_rebuild_whole() {
    let (mut dbs, proxy) = setup();
    let mut conn = connect(proxy.port(), Some("test")).await;
    let (victim, survivor) = victim_and_survivor(&dbs, port_of(&mut conn).await);
    conn.query_drop("SET time_zone = '+03:00'").await.unwrap();
    for i in 0..10_000 {
        let sql = match i % 4 {
            0 => format!("SET @u{} = {i}", i % 300),
            1 => format!(
                "SET SESSION sql_mode = '{}'",
                ["ANSI", "TRADITIONAL"][(i / 4) % 2]
            ),
            2 => format!("SET @@session.max_join_size = {}", 1_000_000 + i),
            _ => format!("SET @last = 'v{i}'"),
        };
        conn.query_drop(sql).await.unwrap();
    }
    dbs[victim].kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(port_of(&mut conn).await, survivor, "{}", proxy.log());
    let row: (String, String, u64, String, Option<String>) = conn
        .query_first("SELECT @@time_zone, @@sql_mode, @@max_join_size, @last, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.0, "+03:00", "set before 10,000 others");
    assert!(row.1.contains("TRADITIONAL"), "{}", row.1);
    assert_eq!(row.2, 1_000_000 + 9_998);
    assert_eq!(row.3, "v9999");
    assert_eq!(row.4.as_deref(), Some("test"));
    for k in [0usize, 76, 296] {
        let v: i64 = conn
            .query_first(format!("SELECT @u{k}"))
            .await
            .unwrap()
            .unwrap();
        let last = (0..10_000)
            .step_by(4)
            .filter(|i| i % 300 == k)
            .max()
            .unwrap();
        assert_eq!(v, last as i64, "@u{k}");
    }
}

#[tokio::test]
async fn state_that_cannot_be_restored_is_told_never_dropped_in_silence() {
    let (mut dbs, proxy) = setup();
    let mut conn = connect(proxy.port(), None).await;
    let (victim, _) = victim_and_survivor(&dbs, port_of(&mut conn).await);
    // A multi-statement SET: the proxy does not replay those.
    conn.query_drop("SET @a = 1; SET @b = 2").await.unwrap();
    dbs[victim].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = conn
        .query_drop("SELECT @a")
        .await
        .expect_err("the session could not be rebuilt whole");
    let (code, _, message) = server_error(&err);
    assert_eq!(code, 9004, "{message}");
    assert!(message.contains("cannot be restored"), "{message}");
    assert!(message.contains("not executed"), "{message}");
    let _ = proxy;
}

#[tokio::test]
async fn prepared_statements_whose_ids_differ_on_the_new_backend_keep_working() {
    let (mut dbs, proxy) = setup();
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap();
    let from: u16 = c.query_value("SELECT @@port").unwrap().parse().unwrap();
    let (victim, survivor) = victim_and_survivor(&dbs, from);
    c.query("INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)")
        .unwrap();
    // Ids with a gap between them: a new backend numbers them consecutively, so at least
    // one differs from the client's.
    let first = c.prepare("SELECT v FROM t WHERE id = ?").unwrap();
    let burned: Vec<_> = (0..4).map(|_| c.prepare("SELECT 1").unwrap()).collect();
    for s in burned {
        c.stmt_close(s);
    }
    let echo = c.prepare("SELECT CONCAT('<', ?, '>')").unwrap();
    let scan = c.prepare("SELECT id FROM t ORDER BY id").unwrap();
    assert!(echo.id > first.id + 1);

    dbs[victim].kill();
    std::thread::sleep(Duration::from_millis(800));
    let now: u16 = c.query_value("SELECT @@port").unwrap().parse().unwrap();
    assert_eq!(now, survivor, "{}", proxy.log());
    // execute: the rows come from the survivor, which has no rows in t.
    c.query("INSERT INTO t VALUES (5, 50)").unwrap();
    let rs = c.execute(first, &[Param::Int(5)], false).unwrap();
    assert_eq!(rs[0].rows, vec![vec![Some("50".to_owned())]]);
    // send long data, then execute with it
    c.send_long_data(echo, 0, b"long");
    let rs = c.execute(echo, &[Param::LongData], false).unwrap();
    assert_eq!(rs[0].rows, vec![vec![Some("<long>".to_owned())]]);
    // reset, then a cursor and fetch
    c.stmt_reset(echo).unwrap();
    c.execute(scan, &[], true).unwrap();
    let (rows, _) = c.fetch(scan, 10).unwrap();
    assert_eq!(rows, vec![vec![Some("5".to_owned())]]);
    c.stmt_reset(scan).unwrap();
    // close one, prepare another: the new one must not take an id the client still holds
    c.stmt_close(first);
    let fresh = c.prepare("SELECT ? + 1").unwrap();
    assert!(fresh.id != echo.id && fresh.id != scan.id, "{fresh:?}");
    let rs = c.execute(fresh, &[Param::Int(41)], false).unwrap();
    assert_eq!(rs[0].rows, vec![vec![Some("42".to_owned())]]);
    let rs = c.execute(echo, &[Param::Str("x".into())], false).unwrap();
    assert_eq!(rs[0].rows, vec![vec![Some("<x>".to_owned())]]);
    // the closed id is unknown to the backend, as it would be without the proxy
    let err = c
        .execute(first, &[Param::Int(5)], false)
        .expect_err("closed statement");
    assert_eq!(err.code, 1243, "{err:?}");
}

#[test]
fn state_after_reset_connection_is_rebuilt_as_the_server_left_it() {
    let (mut dbs, proxy) = setup();
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap();
    let from: u16 = c.query_value("SELECT @@port").unwrap().parse().unwrap();
    let (victim, survivor) = victim_and_survivor(&dbs, from);
    c.query("SET @x = 1, time_zone = '+05:00'").unwrap();
    c.reset_connection().unwrap();
    let probe =
        "SELECT CONCAT_WS('/', IFNULL(DATABASE(), 'none'), IFNULL(@x, 'null'), @@time_zone)";
    let before = c.query_value(probe);
    dbs[victim].kill();
    std::thread::sleep(Duration::from_millis(800));
    let now: u16 = c.query_value("SELECT @@port").unwrap().parse().unwrap();
    assert_eq!(now, survivor, "{}", proxy.log());
    assert_eq!(
        c.query_value(probe),
        before,
        "what the reset left, no more, no less"
    );
}

fn http_post(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("status port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_session_holding_prepared_statements_moves_when_asked() {
    let (dbs, proxy) = setup();
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap();
    let from: u16 = c.query_value("SELECT @@port").unwrap().parse().unwrap();
    let (_, to) = victim_and_survivor(&dbs, from);
    let kept = c.prepare("SELECT ? * 2").unwrap();
    for _ in 0..3 {
        let s = c.prepare("SELECT 1").unwrap();
        c.stmt_close(s);
    }
    let late = c.prepare("SELECT CONCAT(?, '!')").unwrap();
    let resp = http_post(
        proxy.api_port(),
        &format!("/api/admin/migrate?from=127.0.0.1:{from}"),
    );
    assert!(resp.contains("\"requested\":1"), "{resp}");
    // The session acts on the request before its next command (bounded: 40 x 100 ms).
    let mut now = from;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        now = c.query_value("SELECT @@port").unwrap().parse().unwrap();
        if now == to {
            break;
        }
    }
    assert_eq!(now, to, "the session did not move:\n{}", proxy.log());
    let rs = c.execute(kept, &[Param::Int(21)], false).unwrap();
    assert_eq!(rs[0].rows, vec![vec![Some("42".to_owned())]]);
    let rs = c.execute(late, &[Param::Str("hi".into())], false).unwrap();
    assert_eq!(rs[0].rows, vec![vec![Some("hi!".to_owned())]]);
}

#[tokio::test]
async fn after_a_rebuild_an_autocommit_write_is_still_judged_as_autocommit() {
    let (mut dbs, proxy) = setup_n(3);
    let mut conn = connect(proxy.port(), None).await;
    let first = port_of(&mut conn).await;
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO test.t VALUES (1, 1)")
        .await
        .unwrap();
    let victim = dbs.iter().position(|d| d.port() == first).unwrap();
    dbs[victim].kill();
    let err = conn
        .query_drop("INSERT INTO test.t VALUES (2, 2)")
        .await
        .expect_err("backend gone");
    let (code, _, message) = server_error(&err);
    assert_eq!(code, 1927, "{message}");
    // Now on a second backend, in autocommit mode: a write in flight there, as the very next
    // command (nothing has reported the new session's status yet), is unknown.
    let second: u16 = message
        .split("continues on backend 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("where does it continue? {message}"));
    let victim = dbs.iter().position(|d| d.port() == second).unwrap();
    let write = tokio::spawn(async move {
        let r = conn
            .query_drop("INSERT INTO test.t SELECT 9, SLEEP(30)")
            .await;
        (conn, r)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    dbs[victim].kill();
    let (_conn, r) = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the client is answered")
        .unwrap();
    let (code, state, message) = server_error(&r.expect_err("backend gone"));
    assert_eq!(
        (code, state.as_str()),
        (9003, "08007"),
        "{message}\n{}",
        proxy.log()
    );
}
