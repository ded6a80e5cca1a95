//! The engines other than the default (the workers' own epoll loop, which every other test
//! runs on) against real MariaDB: queries small and large, a transaction, prepared statements
//! and a session move all work with sessions carried by the workers' rings
//! (`proxy.io-engine = "io-uring"`) and by tokio runtimes (`"tokio"`). Where the kernel refuses
//! io_uring for a reason a host may legitimately have (seccomp, `kernel.io_uring_disabled`, no
//! such syscall), the test checks the fallback to epoll happened and the same queries still
//! work; under `CI=true` any other refusal fails.

mod common;

use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::io::{Read, Write};
use std::time::Duration;

const SVC_USER: &str = "svc";
const SVC_PASS: &str = "svcpass";

/// Whether io_uring is usable here; `Err` says why not and whether that is a legitimate
/// refusal (the host forbids it) rather than a broken engine.
fn uring_here() -> Result<(), (String, bool)> {
    match tiproxy::protocol::uring::probe() {
        Ok(()) => Ok(()),
        Err(e) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim() != "0")
                .unwrap_or(false);
            let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS));
            Err((format!("io_uring unavailable: {e}"), disabled || refused))
        }
    }
}

fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("status port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

async fn port_of(conn: &mut Conn) -> u16 {
    conn.query_first("SELECT @@port").await.unwrap().unwrap()
}

/// Queries of every size class the relay handles differently, and a transaction.
async fn exercise(conn: &mut Conn, round: i64) {
    let one: i64 = conn.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    // About 3 MB: many receive buffers and sends that the kernel takes in pieces.
    let rows: Vec<String> = conn
        .query("SELECT REPEAT(CHAR(65 + seq % 26), 1000) FROM test.seq_1_to_3000")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3000);
    for (i, r) in rows.iter().enumerate() {
        let want = char::from(65 + ((i + 1) % 26) as u8);
        assert!(
            r.len() == 1000 && r.chars().all(|c| c == want),
            "row {i} damaged"
        );
    }
    // A 1 MB statement from the client side.
    let big = "x".repeat(1 << 20);
    let len: i64 = conn
        .exec_first("SELECT LENGTH(?)", (big.as_str(),))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(len, 1 << 20);
    conn.query_drop("BEGIN").await.unwrap();
    conn.exec_drop("INSERT INTO test.t VALUES (?, ?)", (round, round * 10))
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    let v: i64 = conn
        .exec_first("SELECT v FROM test.t WHERE id = ?", (round,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, round * 10);
}

/// Runs queries and a session move through a proxy on `engine`; returns the proxy's log.
async fn queries_and_a_move(engine: &str) -> String {
    let dbs = MariaDb::start_many(2);
    for db in &dbs {
        db.sql(&format!(
            "CREATE USER '{SVC_USER}'@'%' IDENTIFIED BY '{SVC_PASS}'; \
             GRANT SELECT ON mysql.* TO '{SVC_USER}'@'%'; \
             CREATE TABLE test.t (id INT PRIMARY KEY, v INT)"
        ));
    }
    let mut cfg = ProxyConfig::new(vec![dbs[0].addr(), dbs[1].addr()]);
    cfg.service_account = Some((SVC_USER.into(), SVC_PASS.into()));
    cfg.health_interval_ms = 300;
    cfg.extra_proxy = format!("io-engine = \"{engine}\"\n");
    let proxy = Proxy::start(&cfg);

    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(
            Conn::new(builder(proxy.port(), APP_USER, APP_PASS).db_name(None::<String>))
                .await
                .expect("connect through the proxy"),
        );
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        exercise(conn, i as i64 + 1).await;
    }

    // A move: the session's state follows it and its new backend socket joins the ring.
    let conn = &mut conns[0];
    conn.query_drop("SET @v = 42").await.unwrap();
    let stmt = conn.prep("SELECT ? * 2").await.unwrap();
    let from = port_of(conn).await;
    let to = if from == dbs[0].port() {
        dbs[1].port()
    } else {
        dbs[0].port()
    };
    let resp = http(
        proxy.api_port(),
        "POST",
        &format!("/api/admin/migrate?from=127.0.0.1:{from}"),
    );
    assert!(resp.contains("\"requested\":"), "{resp}");
    let mut moved = false;
    for _ in 0..80 {
        if port_of(conn).await == to {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(moved, "session never moved:\n{}", proxy.log());
    let v: i64 = conn.query_first("SELECT @v").await.unwrap().unwrap();
    assert_eq!(v, 42, "user variable lost in the move");
    let doubled: i64 = conn.exec_first(&stmt, (21,)).await.unwrap().unwrap();
    assert_eq!(doubled, 42, "prepared statement lost in the move");
    exercise(conn, 100).await;

    for conn in conns {
        conn.disconnect().await.unwrap();
    }
    proxy.log()
}

#[tokio::test]
async fn queries_and_a_session_move_run_on_the_io_uring_engine() {
    let available = uring_here();
    if let Err((why, legitimate)) = &available {
        if std::env::var("CI").as_deref() == Ok("true") && !legitimate {
            panic!("{why}: the engine cannot be tested");
        }
    }
    let log = queries_and_a_move("io-uring").await;
    match available {
        Ok(()) => {
            assert!(
                log.contains("io_engine=io-uring") || log.contains("\"io_engine\":\"io-uring\""),
                "the workers did not start on io_uring:\n{log}"
            );
            assert!(!log.contains("ring not created"), "{log}");
        }
        Err((why, _)) => {
            assert!(
                log.contains("io_uring is unavailable here") && log.contains("io_engine=epoll"),
                "{why}, and the proxy did not say it fell back to epoll:\n{log}"
            );
        }
    }
}

#[tokio::test]
async fn queries_and_a_session_move_run_on_the_tokio_engine() {
    let log = queries_and_a_move("tokio").await;
    assert!(
        log.contains("io_engine=tokio") || log.contains("\"io_engine\":\"tokio\""),
        "the workers did not start on tokio runtimes:\n{log}"
    );
}
