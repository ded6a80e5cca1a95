//! Helpers for the ops tests (API, dashboard, tiproxyctl): an in-process proxy on port 0,
//! status-port requests through the tiproxyctl client, and a session through the proxy.

#[allow(unused_imports)]
pub use super::mariadb::MariaDb;
#[allow(unused_imports)]
pub use super::net::closed_port;
use std::time::Duration;
use tiproxy::app::App;
use tiproxy::config::{Config, TlsConfig};
use tiproxy::ctl::client::{Answer, Target};

/// A config listening on 127.0.0.1 port 0 for SQL and HTTP, probing backends quickly.
pub fn test_config(backends: &[String]) -> Config {
    let mut c = Config::default();
    c.proxy.addr = "127.0.0.1:0".into();
    c.api.addr = "127.0.0.1:0".into();
    c.proxy.backend_addrs = backends.to_vec();
    c.health.interval_ms = 200;
    c.health.timeout_ms = 1000;
    c.health.failure_threshold = 1;
    c.health.recovery_threshold = 1;
    c
}

pub async fn start(config: Config) -> App {
    App::start(config).await.expect("proxy starts")
}

pub fn plain(app: &App) -> Target {
    Target::new(
        "127.0.0.1",
        app.api_addr.port(),
        &TlsConfig::default(),
        None,
    )
    .unwrap()
}

pub async fn get(t: &Target, path: &str) -> Answer {
    t.request("GET", path, None)
        .await
        .expect("status port answers")
}

pub async fn put(t: &Target, path: &str, body: &str) -> Answer {
    t.request("PUT", path, Some(body.as_bytes().to_vec()))
        .await
        .expect("status port answers")
}

pub fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body))
}

/// Polls `cond` up to `tries` times, 100 ms apart.
pub async fn eventually<F, Fut>(tries: usize, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A client session through the proxy as app/secret.
pub async fn connect(app: &App) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(app.sql_addr.port())
        .user(Some("app"))
        .pass(Some("secret"))
        .prefer_socket(false);
    mysql_async::Conn::new(opts)
        .await
        .expect("session through the proxy")
}
