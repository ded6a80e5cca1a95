//! Routing rules end to end with real MariaDB: a second SQL port confined to its own backend
//! (the read-only port routed to a replica), and a client network rule told apart by the
//! loopback source address (127.0.0.2 against 127.0.0.1).

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::free_ports;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use common::security::connect_from;
use std::net::SocketAddr;

fn backend_port(c: &mut RawConn) -> u16 {
    c.query_value("SELECT @@port")
        .and_then(|p| p.parse().ok())
        .expect("@@port")
}

fn login_from(src: [u8; 4], port: u16) -> Result<RawConn, String> {
    let dst: SocketAddr = ([127, 0, 0, 1], port).into();
    let tcp = connect_from(src, dst).map_err(|e| format!("connect: {e}"))?;
    let mut c = RawConn::from_stream(tcp);
    c.handshake(APP_USER, APP_PASS, Some("test"))
        .map_err(|e| format!("{e:?}"))?;
    Ok(c)
}

#[test]
fn ports_and_client_networks_route_to_their_own_backends() {
    let mut dbs = MariaDb::start_many(2);
    let (main_db, replica) = (dbs[0].addr(), dbs[1].addr());
    let (main_port, replica_port) = (dbs[0].port(), dbs[1].port());
    let read_only = free_ports(1)[0];
    let mut cfg = ProxyConfig::new(vec![main_db.clone(), replica.clone()]);
    cfg.more_sql_ports = vec![read_only];
    cfg.extra_tables = format!(
        "\n[[balance.routes]]\nname = \"batch host\"\nclient-cidrs = [\"127.0.0.2/32\"]\nbackends = [{replica:?}]\n\
         \n[[balance.routes]]\nname = \"read-only port\"\nports = [{read_only}]\nbackends = [{replica:?}]\n\
         \n[[balance.routes]]\nname = \"everything else\"\nbackends = [{main_db:?}]\n"
    );
    let proxy = Proxy::start(&cfg);
    let main = proxy.port();

    // (source, proxy port, backend every session must land on). Several sessions each, kept
    // open, so "fewest sessions" alone would have spread them over both backends.
    let cases = [
        ([127, 0, 0, 1], main, main_port),
        ([127, 0, 0, 1], read_only, replica_port),
        ([127, 0, 0, 2], main, replica_port),
        ([127, 0, 0, 2], read_only, replica_port),
    ];
    let mut open = Vec::new();
    for (src, port, want) in cases {
        for i in 0..3 {
            let mut c = login_from(src, port)
                .unwrap_or_else(|e| panic!("login from {src:?} to :{port} #{i}: {e}"));
            assert_eq!(backend_port(&mut c), want, "from {src:?} to proxy :{port}");
            open.push(c);
        }
    }
    eprintln!(
        "routing: 12 sessions over 2 SQL ports and 2 sources, each on its rule's backend (main :{main_port}, replica :{replica_port})"
    );

    // The replica gone: its port refuses rather than sending readers to the main backend,
    // and the main port keeps working.
    dbs[1].kill();
    let refused = login_from([127, 0, 0, 1], read_only);
    assert!(
        refused.is_err(),
        "the read-only port must not fall back to the main backend"
    );
    let mut c = login_from([127, 0, 0, 1], main).expect("main port still serves");
    assert_eq!(backend_port(&mut c), main_port);
    eprintln!(
        "routing: replica down: read-only port refused ({}), main port served",
        refused.err().unwrap_or_default()
    );
    // Once the probes mark it down, the refusal names the rule, not "all backends unhealthy"
    // (the main backend is up).
    let mut last = String::new();
    let named = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(250));
        last = login_from([127, 0, 0, 1], read_only)
            .err()
            .unwrap_or_default();
        // `last` is the ERR packet's Debug form, so the rule's quotes come escaped.
        last.contains("9001") && last.contains("routing rule") && last.contains("read-only port")
    });
    assert!(named, "the refusal does not name the rule: {last}");
    assert!(!last.contains("all 2 backends"), "{last}");
    eprintln!("routing: after the probe: {last}");
}
