//! Hot reload of the config file: a changed backend list is used without a restart, and a
//! broken file is refused with its key and line while the running config stays.

mod common;

use common::client::opts;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use mysql_async::prelude::*;
use std::time::Duration;

async fn session_port(proxy_port: u16) -> Option<u16> {
    let mut conn = mysql_async::Conn::new(opts(proxy_port, APP_USER, APP_PASS))
        .await
        .ok()?;
    let port: Option<u16> = conn.query_first("SELECT @@port").await.ok()?;
    let _ = conn.disconnect().await;
    port
}

/// Polls new sessions until one lands on `want` (bounded: 60 tries, 250 ms apart).
async fn wait_for_backend(proxy_port: u16, want: u16) -> bool {
    for _ in 0..60 {
        if session_port(proxy_port).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test]
async fn backend_added_to_the_file_is_used_without_restart() {
    let dbs = MariaDb::start_many(2);
    let (a, b) = (&dbs[0], &dbs[1]);
    let mut cfg = ProxyConfig::new(vec![a.addr()]);
    let proxy = Proxy::start(&cfg);
    assert_eq!(session_port(proxy.port()).await, Some(a.port()));

    cfg.backends = vec![b.addr()];
    proxy.rewrite_config(&cfg);
    assert!(
        wait_for_backend(proxy.port(), b.port()).await,
        "sessions never moved to the backend written into the file:\n{}",
        proxy.log()
    );
    // the old backend is gone from the list: every new session now lands on b
    for _ in 0..4 {
        assert_eq!(session_port(proxy.port()).await, Some(b.port()));
    }
    assert!(proxy.log().contains("config reloaded"), "{}", proxy.log());
}

#[tokio::test]
async fn broken_file_is_refused_and_the_running_config_stays() {
    let db = MariaDb::start();
    let cfg = ProxyConfig::new(vec![db.addr()]);
    let proxy = Proxy::start(&cfg);
    let good = std::fs::read_to_string(proxy.config_path()).unwrap();
    let broken = good.replace("max-connections = 0", "max-connections = \"lots\"");
    assert_ne!(
        good, broken,
        "the config template changed; update this test"
    );
    proxy.write_config_text(&broken);
    let refused = poll_until(Duration::from_secs(15), || {
        let log = proxy.log();
        log.lines()
            .find(|l| l.contains("config file rejected"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no rejection logged:\n{}", proxy.log()));
    assert!(refused.contains("proxy.max-connections"), "{refused}");
    assert!(refused.contains("lots"), "{refused}");
    assert!(refused.contains("line"), "{refused}");
    // still serving with the old config
    assert_eq!(session_port(proxy.port()).await, Some(db.port()));
    let running = http_get(proxy.api_port(), "/api/admin/config");
    assert!(running.contains("max-connections = 0"), "{running}");
}

/// A bare HTTP/1.0 GET, enough for the status port.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("status port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
