//! Hostile backends: killed mid-query, frozen with SIGSTOP, hanging mid-authentication and
//! sending malformed packets. Each case bounds how long the client waits for a clear answer
//! and checks that a session on another backend never notices.

mod common;

use common::bystander::Bystander;
use common::cli::send_signal;
use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use common::scripted::{Script, ScriptedBackend};
use std::time::{Duration, Instant};

fn login(addr: &str) -> RawConn {
    RawConn::login(addr, APP_USER, APP_PASS, Some("test")).expect("login through the proxy")
}

/// Sends a command without waiting for its answer (sequence id 0, as every command starts).
fn send_command(c: &mut RawConn, payload: &[u8]) {
    let mut p = (payload.len() as u32).to_le_bytes().to_vec();
    p[3] = 0;
    p.extend_from_slice(payload);
    c.send_raw(&p);
}

fn port_of(c: &mut RawConn) -> String {
    c.query_value("SELECT @@port").expect("@@port")
}

/// Logs in until one session sits on each backend; returns them in backend order.
fn one_session_each(proxy: &Proxy, dbs: &[&MariaDb]) -> Vec<RawConn> {
    let mut slots: Vec<Option<RawConn>> = dbs.iter().map(|_| None).collect();
    let mut spare = Vec::new();
    for _ in 0..20 {
        let mut c = login(&proxy.addr());
        let port = port_of(&mut c);
        match dbs.iter().position(|d| d.port().to_string() == port) {
            Some(i) if slots[i].is_none() => slots[i] = Some(c),
            _ => spare.push(c),
        }
        if slots.iter().all(Option::is_some) {
            return slots.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("sessions never spread over both backends");
}

#[test]
fn backend_killed_mid_query_fails_fast_and_alone() {
    let mut dbs = MariaDb::start_many(2);
    let mut proxy = Proxy::start(&ProxyConfig::new(dbs.iter().map(|d| d.addr()).collect()));
    let mut sessions = one_session_each(&proxy, &[&dbs[0], &dbs[1]]);
    let bystander = Bystander::start(sessions.pop().unwrap());
    let mut victim = sessions.pop().unwrap();

    send_command(&mut victim, b"\x03SELECT SLEEP(60)");
    std::thread::sleep(Duration::from_millis(500));
    dbs[0].kill();
    let killed = Instant::now();
    let reply = victim.read_packet();
    let waited = killed.elapsed();
    let exited = proxy_exit(&mut proxy);
    let err = reply.unwrap_or_else(|e| {
        panic!(
            "the client must get an ERR, not {e} (proxy exit {exited:?}):\n{}",
            proxy.log()
        )
    });
    assert_eq!(err[0], 0xff, "expected ERR, got {err:?}");
    let err = common::raw::parse_err(&err);
    // The SELECT was running: whether it finished is unknown, and the proxy says only that.
    assert_eq!(
        (err.code, err.sqlstate.as_str()),
        (9003, "08007"),
        "{err:?}"
    );
    eprintln!("killed backend: ERR {} after {waited:?}", err.code);
    assert!(waited < Duration::from_secs(3), "answer took {waited:?}");

    // New sessions land on the survivor while the bystander keeps going.
    for _ in 0..5 {
        let mut c = login(&proxy.addr());
        assert_eq!(port_of(&mut c), dbs[1].port().to_string());
    }
    std::thread::sleep(Duration::from_secs(1));
    bystander.finish();
}

#[test]
fn sigstopped_backend_is_bounded_and_taken_out() {
    let dbs = MariaDb::start_many(2);
    let mut cfg = ProxyConfig::new(dbs.iter().map(|d| d.addr()).collect());
    cfg.backend_connect_timeout = 2;
    let proxy = Proxy::start(&cfg);
    let mut sessions = one_session_each(&proxy, &[&dbs[0], &dbs[1]]);
    let bystander = Bystander::start(sessions.pop().unwrap());
    let mut frozen_session = sessions.pop().unwrap();
    let pid = dbs[0].pid().unwrap();

    send_signal(pid, "STOP");
    // A query in flight on the frozen backend waits (a slow query looks the same); it must
    // not take anything else down with it.
    send_command(&mut frozen_session, b"\x03SELECT 7");
    // New logins: the worst case is one dial into the frozen server, bounded by
    // backend-connect-timeout, then the healthy one; health soon takes the frozen one out.
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        let t = Instant::now();
        let mut c = login(&proxy.addr());
        slowest = slowest.max(t.elapsed());
        assert_eq!(port_of(&mut c), dbs[1].port().to_string());
    }
    eprintln!("SIGSTOPped backend: slowest login {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "a login took {slowest:?}");
    let out = poll_until(Duration::from_secs(15), || {
        proxy
            .log()
            .lines()
            .any(|l| l.contains("down") && l.contains(&dbs[0].addr()))
            .then_some(())
    });
    send_signal(pid, "CONT");
    assert!(
        out.is_some(),
        "frozen backend never marked down:\n{}",
        proxy.log()
    );
    // Once thawed, the waiting query completes: the proxy never gave up on a slow answer.
    assert_eq!(frozen_session.read_packet().map(|p| p[0]).ok(), Some(1));
    bystander.finish();
}

#[test]
fn backend_hanging_in_authentication_is_bounded() {
    let stalled = ScriptedBackend::start("pw", Script::StallInAuth);
    let mut cfg = ProxyConfig::new(vec![stalled.addr()]);
    cfg.backend_connect_timeout = 2;
    cfg.client_handshake_timeout = 2;
    // Health probes only connect; they would not notice this backend is useless.
    cfg.health_interval_ms = 600_000;
    let proxy = Proxy::start(&cfg);
    let t = Instant::now();
    let mut c = RawConn::connect(&proxy.addr());
    let err = c
        .handshake(APP_USER, APP_PASS, None)
        .expect_err("a backend that never answers cannot log anyone in");
    let waited = t.elapsed();
    eprintln!("backend hanging in auth: ERR {} after {waited:?}", err.code);
    assert!(waited < Duration::from_secs(8), "login hung for {waited:?}");
    assert_eq!(err.code, 1158, "{err:?}");
}

#[tokio::test]
async fn malformed_backend_packets_end_only_their_session() {
    use mysql_async::prelude::Queryable;
    let bad = ScriptedBackend::start("pw", Script::Malformed);
    let proxy = Proxy::start(&ProxyConfig::new(vec![bad.addr()]));
    // One session stays open across all the broken ones.
    let mut kept = mysql_async::Conn::new(builder(proxy.port(), "u", "pw"))
        .await
        .unwrap();
    for round in 0..20 {
        let mut conn = mysql_async::Conn::new(builder(proxy.port(), "u", "pw"))
            .await
            .unwrap_or_else(|e| panic!("round {round}: login failed: {e}"));
        match conn.query_drop("SELECT 1").await.unwrap_err() {
            mysql_async::Error::Server(e) => {
                assert_eq!((e.code, e.state.as_str()), (1156, "08S01"), "{e:?}")
            }
            other => panic!("round {round}: expected ERR 1156, got {other:?}"),
        }
    }
    // The kept session's backend answers its query with the same broken packet, so it too
    // ends with 1156 rather than a hang or a crash of the proxy.
    let err = kept.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1156),
        "{err:?}"
    );
    assert!(
        common::net::wait_for_port(proxy.api_port(), Duration::from_secs(2)),
        "{}",
        proxy.log()
    );
}

fn proxy_exit(p: &mut Proxy) -> Option<std::process::ExitStatus> {
    p.wait_exit(Duration::from_millis(100))
}
