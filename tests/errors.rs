//! Proxy-made errors: every row of the error table, each as an ERR packet with its exact code
//! and SQLSTATE (never a silent close), plus the max-connections limit.

mod common;

use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::{free_port, poll_until};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::{ErrPacket, RawConn};
use common::scripted::{Script, ScriptedBackend};
use std::time::Duration;

fn login(proxy: &Proxy) -> Result<RawConn, ErrPacket> {
    RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test"))
}

#[track_caller]
fn assert_err(err: &ErrPacket, code: u16, sqlstate: &str) {
    assert_eq!(
        (err.code, err.sqlstate.as_str()),
        (code, sqlstate),
        "wrong error: {err:?}"
    );
    // Proxy errors are sentences that name cause and fix, not bare codes.
    assert!(err.message.len() > 20, "message too terse: {err:?}");
}

#[test]
fn too_many_connections_is_1040() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.max_connections = 2;
    let proxy = Proxy::start(&cfg);
    // The harness's readiness check is a connection too, counted until the proxy sees it
    // close; a login in that moment is refused, so the first two may need another try.
    let admitted = || {
        let mut last = None;
        for _ in 0..50 {
            match login(&proxy) {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("a login under max-connections was refused: {last:?}")
    };
    let _a = admitted();
    let _b = admitted();
    let err = login(&proxy).err().expect("third session must be refused");
    assert_err(&err, 1040, "08004");
}

#[test]
fn malformed_handshake_is_1043() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = RawConn::connect(&proxy.addr());
    let greeting = c.read_packet().unwrap();
    assert_eq!(greeting[0], 10, "expected a greeting");
    // A framed packet with sequence 1, but three bytes are no HandshakeResponse41.
    c.send_raw(&[3, 0, 0, 1, 0xde, 0xad, 0xbe]);
    assert_err(&c.read_err(), 1043, "08S01");
}

#[test]
fn unsupported_command_is_1047() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy).unwrap();
    // COM_BINLOG_DUMP: position 4, flags 0, server id 99, file name.
    let mut p = vec![0x12];
    p.extend_from_slice(&4u32.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&99u32.to_le_bytes());
    p.extend_from_slice(b"mysql-bin.000001");
    let r = c.raw_command(&p);
    assert_eq!(r[0], 0xff, "expected ERR, got {r:?}");
    assert_err(&common::raw::parse_err(&r), 1047, "08S01");
    // The session keeps working after a refused command.
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
}

#[test]
fn new_session_while_shutting_down_is_1053() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.graceful_wait_before_shutdown = 2;
    cfg.graceful_close_conn_timeout = 60;
    let mut proxy = Proxy::start(&cfg);
    // An open transaction keeps the proxy shutting down (not yet gone) for as long as we poll,
    // whether it refuses new sessions during graceful-wait-before-shutdown or just after it.
    let mut busy = login(&proxy).unwrap();
    busy.query("BEGIN").unwrap();
    proxy.signal("TERM");
    let addr = proxy.addr();
    let err = poll_until(Duration::from_secs(30), || {
        let mut c = RawConn::try_connect(&addr)
            .unwrap_or_else(|e| panic!("listener gone instead of answering 1053: {e}"));
        c.handshake(APP_USER, APP_PASS, None).err()
    })
    .expect("no 1053 while shutting down");
    assert_err(&err, 1053, "08S01");
    busy.query("COMMIT").unwrap();
    let status = proxy.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn silent_client_gets_handshake_timeout_1159() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.client_handshake_timeout = 1;
    let proxy = Proxy::start(&cfg);
    let mut c = RawConn::connect(&proxy.addr());
    let greeting = c.read_packet().unwrap();
    assert_eq!(greeting[0], 10, "expected a greeting");
    // Say nothing; the read timeout (20 s) bounds this if the proxy never answers.
    assert_err(&c.read_err(), 1159, "08S01");
}

#[test]
fn no_backend_configured_is_9001() {
    let proxy = Proxy::start(&ProxyConfig::new(vec![]));
    let err = login(&proxy).err().expect("no backend, no session");
    assert_err(&err, 9001, "08S01");
}

#[test]
fn backend_refusing_connections_is_9002() {
    // Nothing listens there. Health checks are slowed down so the backend still counts as a
    // candidate and the proxy really tries (and fails) to connect.
    let mut cfg = ProxyConfig::new(vec![format!("127.0.0.1:{}", free_port())]);
    cfg.health_interval_ms = 600_000;
    cfg.failure_threshold = 100;
    cfg.backend_connect_timeout = 2;
    let proxy = Proxy::start(&cfg);
    let err = login(&proxy).err().expect("dead backend, no session");
    assert_err(&err, 9002, "08S01");
}

#[test]
fn backend_lost_between_statements_is_9004_not_executed() {
    let (mut db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy).unwrap();
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
    db.kill();
    // The proxy sees the backend go while the session is idle: the next statement is never
    // sent anywhere, and no other backend can take the session.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = c.query("SELECT 2").expect_err("backend is gone");
    assert_err(&err, 9004, "08S01");
    assert!(err.message.contains("not executed"), "{err:?}");
    assert!(err.message.contains("is closed"), "{err:?}");
}

#[test]
fn backend_lost_under_a_running_statement_is_9003_outcome_unknown() {
    let (mut db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        db.kill();
        db
    });
    let p = c.raw_command(b"\x03SELECT SLEEP(30)");
    let _db = killer.join().unwrap();
    assert_eq!(p.first(), Some(&0xff), "expected an ERR, got {p:?}");
    let err = common::raw::parse_err(&p);
    assert_err(&err, 9003, "08007");
    assert!(err.message.contains("unknown"), "{err:?}");
    assert!(!err.message.contains("rolled back"), "{err:?}");
}

#[test]
fn require_backend_tls_without_backend_tls_is_3159() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.require_backend_tls = true;
    let proxy = Proxy::start(&cfg);
    let err = login(&proxy).err().expect("plain backend must be refused");
    assert_err(&err, 3159, "08S01");
}

#[tokio::test]
async fn malformed_backend_packet_is_1156() {
    let backend = ScriptedBackend::start("pw", Script::Malformed);
    let proxy = Proxy::start(&ProxyConfig::new(vec![backend.addr()]));
    let mut conn = mysql_async::Conn::new(builder(proxy.port(), "u", "pw"))
        .await
        .unwrap();
    let err = mysql_async::prelude::Queryable::query_drop(&mut conn, "SELECT 1")
        .await
        .unwrap_err();
    match err {
        mysql_async::Error::Server(e) => {
            assert_eq!((e.code, e.state.as_str()), (1156, "08S01"), "{e:?}")
        }
        other => panic!("expected ERR 1156, got {other:?}"),
    }
}
