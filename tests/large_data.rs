//! Payloads that cross the 16 MiB packet boundary and LOAD DATA LOCAL INFILE through the proxy.

mod common;

use common::client::builder;
use common::mariadb::{APP_PASS, APP_USER};
use mysql_async::prelude::*;
use mysql_async::WhiteListFsHandler;

/// Deterministic, non-repeating-looking bytes so a shifted or truncated copy cannot match.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn blob_of_20_mib_round_trips() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = mysql_async::Conn::new(builder(proxy.port(), APP_USER, APP_PASS))
        .await
        .unwrap();
    conn.query_drop("CREATE TABLE b (id INT PRIMARY KEY, data LONGBLOB)")
        .await
        .unwrap();
    let data = pattern(20 * 1024 * 1024);
    // Prepared: the parameter travels in packets split at 16 MiB.
    conn.exec_drop("INSERT INTO b VALUES (1, ?)", (data.clone(),))
        .await
        .unwrap();
    let len: i64 = conn
        .query_first("SELECT LENGTH(data) FROM b WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(len as usize, data.len());
    // Text protocol: the row comes back in split packets too.
    let back: Vec<u8> = conn
        .query_first("SELECT data FROM b WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        back == data,
        "20 MiB blob came back different (len {})",
        back.len()
    );
    // Binary protocol read.
    let back: Vec<u8> = conn
        .exec_first("SELECT data FROM b WHERE id = ?", (1,))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "binary-protocol read differs");
    let one: i64 = conn.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1, "session still in sync after large packets");
}

#[tokio::test]
async fn load_data_local_infile_with_mysql_async() {
    let (_db, proxy) = common::db_and_proxy();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.csv");
    let body: String = (0..5000).map(|i| format!("{i},name{i}\n")).collect();
    std::fs::write(&file, body).unwrap();
    let opts = builder(proxy.port(), APP_USER, APP_PASS)
        .local_infile_handler(Some(WhiteListFsHandler::new([&file])));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    conn.query_drop("CREATE TABLE l (id INT PRIMARY KEY, name VARCHAR(20))")
        .await
        .unwrap();
    conn.query_drop(format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE l FIELDS TERMINATED BY ','",
        file.display()
    ))
    .await
    .unwrap();
    assert_eq!(conn.affected_rows(), 5000);
    let (n, last): (i64, String) = conn
        .query_first("SELECT COUNT(*), MAX(name) FROM l")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n, last.as_str()), (5000, "name999"));
}

#[test]
fn load_data_local_infile_with_cli() {
    let (db, proxy) = common::db_and_proxy();
    db.sql("CREATE TABLE test.c (id INT PRIMARY KEY, v VARCHAR(10))");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.tsv");
    let body: String = (0..1000).map(|i| format!("{i}\tv{i}\n")).collect();
    std::fs::write(&file, body).unwrap();
    let sql = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE test.c; SELECT COUNT(*) FROM test.c",
        file.display()
    );
    let out = common::cli::mariadb(
        proxy.port(),
        APP_USER,
        APP_PASS,
        &["--local-infile=1"],
        &sql,
    );
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1000");
}
