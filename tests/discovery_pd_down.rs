//! PD unreachable from the start: the proxy still binds, serves static backends, explains
//! itself to clients when nothing else is available, and logs the outage briefly even at debug.

mod common;

use common::net::closed_port;
use common::pd::*;
use std::time::Duration;

/// Lines that mention PD or its client stack.
fn pd_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            l.contains("PD")
                || ["etcd", "h2", "tonic", "tower", "grpc"]
                    .iter()
                    .any(|w| lower.contains(w))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_backends_are_served_while_pd_is_down_and_logs_stay_short() {
    let db = Mariadb::start();
    let proxy = Proxy::start(
        &format!(
            "pd-addrs = \"127.0.0.1:{}\"\nbackend-addrs = [\"{}\"]",
            closed_port(),
            db.addr()
        ),
        "",
    )
    .await;
    assert_eq!(proxy.landing_port().await.unwrap(), db.port());
    wait_for(
        "the outage to be logged",
        Duration::from_secs(20),
        || async { proxy.log().contains("PD is unreachable").then_some(()) },
    )
    .await;
    // Several seconds of retries (backoff 0.5 s, 1 s, 2 s, ...) at level debug.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(proxy.landing_port().await.unwrap(), db.port());
    let log = proxy.log();
    let lines = pd_lines(&log);
    assert!(
        !lines.is_empty() && lines.len() <= 3,
        "PD lines: {lines:#?}"
    );
    assert_eq!(log.matches("PD is unreachable").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backends_the_client_is_told_pd_is_unreachable() {
    let proxy = Proxy::start(&format!("pd-addrs = \"127.0.0.1:{}\"", closed_port()), "").await;
    let err = wait_for(
        "the client error to name PD",
        Duration::from_secs(20),
        || async {
            match proxy.landing_port().await {
                Err(e) if e.contains("PD") => Some(e),
                _ => None,
            }
        },
    )
    .await;
    assert!(err.contains("9001") || err.contains("unreachable"), "{err}");
    // the health API answers 502 (as TiProxy: no backend can take a session) and says why
    let health = http_get(proxy.api_port, "/api/debug/health");
    assert!(
        health.starts_with("HTTP/1.1 502") || health.starts_with("HTTP/1.0 502"),
        "{health}"
    );
    assert!(health.contains("\"unhealthy_reason\""), "{health}");
    assert!(health.contains("\"pd_reachable\":false"), "{health}");
    assert!(health.contains("\"backends_available\":0"), "{health}");
    assert!(health.contains("PD"), "{health}");
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("status port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
