//! Graceful shutdown on SIGINT, SIGTERM and SIGQUIT: exit 0, idle sessions closed, a session
//! inside a transaction may finish it and its data is committed.

mod common;

use common::client::app_conn;
use common::mariadb::MariaDb;
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use mysql_async::prelude::*;
use std::net::TcpStream;
use std::time::Duration;

async fn graceful_shutdown_on(sig: &str) {
    let db = MariaDb::start();
    db.sql("CREATE TABLE test.s (id INT PRIMARY KEY) ENGINE=InnoDB");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    // Long enough that an exit below cannot be the forced close after the timeout.
    cfg.graceful_close_conn_timeout = 120;
    let mut proxy = Proxy::start(&cfg);
    let mut idle = app_conn(proxy.port()).await;
    let mut busy = app_conn(proxy.port()).await;
    idle.ping().await.unwrap();
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO s VALUES (1)").await.unwrap();

    proxy.signal(sig);
    // Give the proxy a chance to act on the signal before the transaction goes on: wait
    // (bounded) for its listener to close. Not asserted: the listener is not the contract.
    let port = proxy.port();
    let _ = poll_until(Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });

    busy.query_drop("INSERT INTO s VALUES (2)")
        .await
        .unwrap_or_else(|e| panic!("statement inside the transaction after {sig}: {e}"));
    busy.query_drop("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("COMMIT after {sig}: {e}"));

    let status = proxy.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "tiproxy must exit 0 after SIG{sig} once sessions are done, got {status:?}\n{}",
        proxy.log()
    );
    assert!(idle.ping().await.is_err(), "idle session must be closed");
    assert!(
        busy.ping().await.is_err(),
        "finished session must be closed"
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM test.s"),
        "2",
        "both rows committed"
    );
}

#[tokio::test]
async fn sigint_is_graceful() {
    graceful_shutdown_on("INT").await;
}

#[tokio::test]
async fn sigterm_is_graceful() {
    graceful_shutdown_on("TERM").await;
}

#[tokio::test]
async fn sigquit_is_graceful() {
    graceful_shutdown_on("QUIT").await;
}

#[test]
fn idle_only_proxy_exits_promptly_on_sigterm() {
    let db = MariaDb::start();
    let mut proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let mut c = common::raw::RawConn::login(&proxy.addr(), "app", "secret", None).unwrap();
    c.ping().unwrap();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        proxy.log()
    );
}
