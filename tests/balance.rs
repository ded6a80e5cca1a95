//! Spreading sessions over two backends, and skipping a backend that died.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::collections::HashMap;

fn session_port(c: &mut RawConn) -> u16 {
    c.query_value("SELECT @@port")
        .and_then(|p| p.parse().ok())
        .expect("@@port")
}

#[test]
fn six_sessions_split_three_three_then_failover() {
    let mut dbs = MariaDb::start_many(2);
    let proxy = Proxy::start(&ProxyConfig::new(dbs.iter().map(MariaDb::addr).collect()));
    // Keep every session open so "fewest sessions" sees all of them.
    let mut sessions: Vec<RawConn> = (0..6)
        .map(|_| RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap())
        .collect();
    let ports: Vec<u16> = sessions.iter_mut().map(session_port).collect();
    let mut per_port: HashMap<u16, usize> = HashMap::new();
    for p in &ports {
        *per_port.entry(*p).or_default() += 1;
    }
    let expected: HashMap<u16, usize> = dbs.iter().map(|d| (d.port(), 3)).collect();
    assert_eq!(per_port, expected, "sessions per backend port");

    let dead = dbs[0].port();
    dbs[0].kill();
    let alive = dbs[1].port();
    // New sessions must all succeed on the survivor, whether or not health checks noticed yet.
    for i in 0..6 {
        let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test"))
            .unwrap_or_else(|e| panic!("session {i} after killing :{dead} failed: {e:?}"));
        assert_eq!(session_port(&mut c), alive);
    }
    // Sessions already on the survivor are untouched.
    for (c, port) in sessions.iter_mut().zip(&ports) {
        if *port == alive {
            c.ping().unwrap();
        }
    }
}
