//! The SQL port attacked before authentication: a flood of connects that never say anything,
//! from one host, and PROXY protocol headers from a host that is not a trusted balancer. Real
//! users (from another loopback address) must keep logging in to a real MariaDB throughout,
//! and the flood must cost the backend only a small, fixed number of connections.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use common::security::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// The attacker's loopback address; real users come from 127.0.0.1.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];
/// Early backend dials open at once (src/proxy/session/early.rs).
const MAX_EARLY: usize = 16;

fn threads_connected(db: &MariaDb) -> usize {
    db.sql("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("Threads_connected")
}

fn sql_addr(proxy: &Proxy) -> SocketAddr {
    proxy.addr().parse().unwrap()
}

fn real_logins(proxy: &Proxy, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            RawConn::login(&proxy.addr(), APP_USER, APP_PASS, None)
                .ok()
                .and_then(|mut c| c.query_value("SELECT 1"))
                .as_deref()
                == Some("1")
        })
        .count()
}

/// Opens `n` silent connections from the attacker's address; returns them with how many the
/// proxy greeted and how many it refused at once, and with which codes.
fn silent_flood(proxy: &Proxy, n: usize) -> (Vec<std::net::TcpStream>, usize, Vec<u16>) {
    let mut held = Vec::with_capacity(n);
    let (mut greeted, mut refused) = (0, Vec::new());
    for _ in 0..n {
        let Ok(mut s) = connect_from(ATTACKER, sql_addr(proxy)) else {
            continue;
        };
        match first_packet(&mut s, Duration::from_secs(5)) {
            Some((true, _)) => greeted += 1,
            Some((false, code)) => refused.push(code),
            None => {}
        }
        held.push(s);
    }
    (held, greeted, refused)
}

#[test]
fn silent_connects_cost_the_backend_a_fixed_few_connections() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    // Only the early-dial bound is under test here; the per-source limit has its own test.
    cfg.extra_proxy = "max-handshakes-per-source = 0\n".into();
    let proxy = Proxy::start(&cfg);
    assert_eq!(real_logins(&proxy, 1), 1);
    let before = threads_connected(&db);
    let max: usize = db.sql("SELECT @@max_connections").parse().unwrap();

    // More silent connects than MariaDB takes connections: the flood filled it.
    let flood = max + 150;
    let (held, greeted, refused) = silent_flood(&proxy, flood);
    let during = threads_connected(&db);
    let logins = real_logins(&proxy, 30);
    let during_logins = threads_connected(&db);
    eprintln!(
        "silent flood: {flood} connects ({greeted} greeted, {} refused) against MariaDB \
         max_connections {max}; backend threads before {before}, during {during}, while \
         logging in {during_logins}; real logins during the flood: {logins}/30",
        refused.len()
    );
    assert_eq!(
        greeted, flood,
        "every silent connect is greeted (no per-source limit)"
    );
    assert!(
        during <= before + MAX_EARLY + 2,
        "{during} backend connections during the flood (before: {before})"
    );
    assert_eq!(
        logins,
        30,
        "real users were locked out\n{}",
        proxy.log_file()
    );
    drop(held);
}

#[test]
fn one_host_cannot_hold_more_than_its_share_of_handshakes() {
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let (held, greeted, refused) = silent_flood(&proxy, 250);
    let logins = real_logins(&proxy, 30);
    eprintln!(
        "per-source: 250 silent connects from 127.0.0.2: {greeted} greeted, {} refused \
         with {:?}; real logins from 127.0.0.1 meanwhile: {logins}/30",
        refused.len(),
        refused.first()
    );
    assert_eq!(greeted, 100, "max-handshakes-per-source defaults to 100");
    assert_eq!(refused.len(), 150);
    assert!(refused.iter().all(|c| *c == 1040), "{refused:?}");
    assert_eq!(logins, 30);
    assert!(proxy
        .log_file()
        .contains("too many connections from this address are still logging in"));
    // The attacker's slots come back when its connections go.
    drop(held);
    let again = common::net::poll_until(Duration::from_secs(10), || {
        let mut s = connect_from(ATTACKER, sql_addr(&proxy)).ok()?;
        first_packet(&mut s, Duration::from_secs(5))
            .filter(|(greeting, _)| *greeting)
            .map(|_| ())
    });
    assert!(again.is_some(), "the attacker's address stayed blocked");
}

#[test]
fn a_proxy_header_from_an_untrusted_source_is_not_believed() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.proxy_protocol = "v2".into();
    cfg.extra_proxy =
        "proxy-protocol-networks = [\"127.0.0.2/32\"]\nbackend-proxy-protocol = \"off\"\n".into();
    let proxy = Proxy::start(&cfg);
    let dst = sql_addr(&proxy);

    // A client that reaches the port directly and claims to be 6.6.6.6.
    let mut spoof = std::net::TcpStream::connect(dst).unwrap();
    spoof
        .write_all(&proxy_v2_header(
            [6, 6, 6, 6],
            4444,
            [127, 0, 0, 1],
            dst.port(),
        ))
        .unwrap();
    spoof
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let r = spoof.read_to_end(&mut got);
    // Closed (a reset, as its header went unread) without a greeting.
    let closed = match &r {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed && got.is_empty(),
        "spoofer was answered: {r:?} {got:?}"
    );

    // The trusted balancer (127.0.0.2) names the real client, who logs in as usual.
    let mut via_balancer = connect_from(ATTACKER, dst).unwrap();
    via_balancer
        .write_all(&proxy_v2_header(
            [10, 9, 8, 7],
            5555,
            [127, 0, 0, 1],
            dst.port(),
        ))
        .unwrap();
    let mut c = RawConn::from_stream(via_balancer);
    c.handshake(APP_USER, APP_PASS, None)
        .expect("login through the balancer");
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
    let conns = http(proxy.api_port(), "GET", "/api/connections", &[], "");
    assert_eq!(conns.status, 200, "{}", conns.body);
    assert!(conns.body.contains("10.9.8.7"), "{}", conns.body);
    assert!(!conns.body.contains("6.6.6.6"), "{}", conns.body);
    let log = proxy.log_file();
    assert!(
        log.contains("not in [proxy] proxy-protocol-networks"),
        "{log}"
    );
    eprintln!("PROXY header: spoof from 127.0.0.1 closed unanswered; balancer 127.0.0.2 login as 10.9.8.7 served");
}
