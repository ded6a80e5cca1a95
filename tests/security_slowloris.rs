//! Slowloris against the status port: thousands of connections that each send half a request
//! and stop. The proxy must keep its file descriptors and memory bounded, answer health checks
//! and let SQL users log in throughout, and close a half-sent request on its own.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::procfs::{peak_rss_kib, rss_kib};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use common::security::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Half-sent requests opened by the attacker (the run used 21,000 to exhaust fds; a
/// few thousand already exceed the cap many times over).
const SLOW: usize = 3000;
/// The status port's connection cap (src/api/slots.rs).
const CAP: usize = 256;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn real_user_logs_in(proxy: &Proxy) {
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, None)
        .unwrap_or_else(|e| panic!("real login failed: {e:?}\n{}", proxy.log()));
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
}

#[test]
fn half_sent_requests_cannot_starve_health_checks_or_logins() {
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let port = proxy.api_port();
    let pid = proxy.pid();
    real_user_logs_in(&proxy);
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));

    let mut slow = Vec::with_capacity(SLOW);
    let mut health_during = Vec::new();
    for i in 0..SLOW {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.write_all(b"GET /api/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        slow.push(s);
        if i % 1000 == 999 {
            health_during.push(http(port, "GET", "/api/debug/health", &[], "").status);
            real_user_logs_in(&proxy);
        }
    }
    let fds_during = open_fds(pid);
    let rss_during = rss_kib(pid);
    let health = http(port, "GET", "/api/debug/health", &[], "");
    assert_eq!(health.status, 200, "{}", health.body);
    health_during.push(health.status);
    for _ in 0..5 {
        real_user_logs_in(&proxy);
    }
    assert!(health_during.iter().all(|s| *s == 200), "{health_during:?}");
    // The status port holds at most CAP connections; the rest of the proxy's fds are its
    // listeners, backends, log and the like, which `fds_before` counted.
    assert!(
        fds_during <= fds_before + CAP + 16,
        "{fds_during} fds open during the attack (before: {fds_before})"
    );

    drop(slow);
    let settled = poll_until(Duration::from_secs(20), || {
        (open_fds(pid) <= fds_before + 8).then_some(())
    });
    let (fds_after, rss_after, peak) = (open_fds(pid), rss_kib(pid), peak_rss_kib(pid));
    eprintln!(
        "slowloris: {SLOW} half-sent requests; proxy fds before {fds_before}, during \
         {fds_during}, after {fds_after}; RSS KiB before {rss_before}, during {rss_during}, \
         after {rss_after}, peak {peak}; health during: {health_during:?}"
    );
    assert!(
        settled.is_some(),
        "fds stayed at {fds_after} (before: {fds_before})"
    );
    assert!(
        peak < rss_before + 64 * 1024,
        "peak RSS {peak} KiB against {rss_before} KiB before"
    );
    real_user_logs_in(&proxy);
}

#[test]
fn a_half_sent_request_is_closed_by_the_header_timeout() {
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let mut s = TcpStream::connect(("127.0.0.1", proxy.api_port())).expect("connect");
    s.write_all(b"GET /api/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    // Far longer than the proxy's 10 s header timeout: a read that times out here means the
    // proxy kept the connection.
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(
        !matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the proxy kept a half-sent request open: {r:?}"
    );
    // An idle keep-alive connection is closed the same way.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.api_port())).expect("connect");
    s.write_all(b"GET /api/debug/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(r.is_ok(), "idle keep-alive connection kept: {r:?}");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}
