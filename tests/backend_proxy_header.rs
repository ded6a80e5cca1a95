//! `proxy-protocol = "v2"`: the proxy announces each client's real address to the backend in
//! a PROXY v2 header before the MySQL exchange (as the Go TiProxy does), so TiDB sees who
//! connected. A scripted backend reads what arrives first on each connection.

mod common;

use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiproxy::protocol::proxy_protocol::{encode_v2, parse};

/// Accepts for at most `lifetime`; records the PROXY source of each connection that sent one
/// (`None` for a LOCAL header).
fn header_reader(lifetime: Duration) -> (String, Arc<Mutex<Vec<Option<SocketAddr>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + lifetime;
        while Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let seen = seen.clone();
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                for _ in 0..20 {
                    match parse(&buf) {
                        Ok(Some(h)) => {
                            seen.lock().unwrap().push(h.source);
                            return;
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, out)
}

#[test]
fn backends_are_told_the_clients_address() {
    let (backend, seen) = header_reader(Duration::from_secs(60));
    let mut cfg = ProxyConfig::new(vec![backend]);
    cfg.proxy_protocol = "v2".into();
    // The backend never greets: keep it a candidate so the session dials it.
    cfg.health_interval_ms = 600_000;
    cfg.failure_threshold = 100;
    cfg.backend_connect_timeout = 3;
    let proxy = Proxy::start(&cfg);

    let client: SocketAddr = "203.0.113.9:40001".parse().unwrap();
    let mut c = RawConn::connect(&proxy.addr());
    c.send_raw(&encode_v2(client, proxy.addr().parse().unwrap()));
    // The backend only reads the header, so the login fails; what it read is the point.
    let _ = c.handshake("app", "secret", None);
    let got = common::net::poll_until(Duration::from_secs(10), || {
        seen.lock().unwrap().contains(&Some(client)).then_some(())
    });
    let seen = seen.lock().unwrap().clone();
    eprintln!("PROXY sources the backend read: {seen:?}");
    assert!(got.is_some(), "the backend never read {client}: {seen:?}");
    // The health probe (first round at start) announced itself as LOCAL.
    assert!(
        seen.contains(&None),
        "no LOCAL header from the probe: {seen:?}"
    );
}

#[test]
fn off_sends_no_header() {
    let (backend, seen) = header_reader(Duration::from_secs(60));
    let mut cfg = ProxyConfig::new(vec![backend]);
    cfg.proxy_protocol = "v2".into();
    cfg.extra_proxy = "backend-proxy-protocol = \"off\"\n".into();
    cfg.health_interval_ms = 600_000;
    cfg.failure_threshold = 100;
    cfg.backend_connect_timeout = 3;
    let proxy = Proxy::start(&cfg);
    let client: SocketAddr = "203.0.113.9:40002".parse().unwrap();
    let mut c = RawConn::connect(&proxy.addr());
    c.send_raw(&encode_v2(client, proxy.addr().parse().unwrap()));
    let _ = c.handshake("app", "secret", None);
    assert!(seen.lock().unwrap().is_empty(), "a header was sent");
}
