//! The compressed protocol through the proxy, from mysql_async and from `mariadb --compress`.

mod common;

use common::client::builder;
use common::mariadb::{APP_PASS, APP_USER};
use mysql_async::prelude::*;
use mysql_async::Compression;

#[tokio::test]
async fn mysql_async_compressed_session() {
    let (_db, proxy) = common::db_and_proxy();
    let opts = builder(proxy.port(), APP_USER, APP_PASS).compression(Compression::default());
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    conn.query_drop("CREATE TABLE z (id INT PRIMARY KEY, body MEDIUMTEXT)")
        .await
        .unwrap();
    // Compressible and large enough to span several compressed frames.
    let body = "tiproxy compression ".repeat(100_000);
    conn.exec_drop("INSERT INTO z VALUES (?, ?)", (1, body.clone()))
        .await
        .unwrap();
    let back: String = conn
        .query_first("SELECT body FROM z WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert!(back == body, "compressed round trip changed the text");
    let mut result = conn.query_iter("SELECT 1; SELECT 2").await.unwrap();
    let a: Vec<i64> = result.collect().await.unwrap();
    let b: Vec<i64> = result.collect().await.unwrap();
    drop(result);
    assert_eq!((a, b), (vec![1], vec![2]));
    // Not checked: the backend's own Compression status. The proxy may end compression at
    // itself and talk plain to the backend; only the client's leg is the contract.
}

#[test]
fn mariadb_cli_with_compress() {
    let (_db, proxy) = common::db_and_proxy();
    let out = common::cli::mariadb(
        proxy.port(),
        APP_USER,
        APP_PASS,
        &["--compress"],
        "SELECT REPEAT('ab', 50000) = REPEAT('ab', 50000)",
    );
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1", "{out:?}");
    // `status` is a client command only when it is the whole -e text.
    let out = common::cli::mariadb(proxy.port(), APP_USER, APP_PASS, &["--compress"], "status");
    assert!(out.ok(), "{out:?}");
    // The CLI's own view of its connection, so this holds wherever compression ends.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("Protocol:") && l.contains("Compressed")),
        "client leg not compressed: {out:?}"
    );
}

/// Responses cut into frames at every possible place: many multi-result queries, and rows
/// larger than the proxy's buffer, on one compressed session. A client checks the packet
/// numbering at each frame boundary, so any slip shows up as PacketsOutOfSync.
#[tokio::test]
async fn compressed_frames_keep_the_numbering_clients_expect() {
    let (_db, proxy) = common::db_and_proxy();
    let opts = builder(proxy.port(), APP_USER, APP_PASS).compression(Compression::fast());
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    for i in 0..150u32 {
        let mut result = conn
            .query_iter(format!("SELECT {i}; SELECT REPEAT('y', {})", i * 500))
            .await
            .unwrap();
        let a: Vec<u32> = result.collect().await.unwrap();
        let b: Vec<String> = result.collect().await.unwrap();
        drop(result);
        assert_eq!(a, vec![i]);
        assert_eq!(b[0].len(), (i * 500) as usize);
    }
}
