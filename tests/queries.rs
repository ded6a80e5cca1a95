//! Text-protocol queries through the proxy with mysql_async: plain, multi-statement, multi-result.

mod common;

use common::client::app_conn;
use mysql_async::prelude::*;

#[tokio::test]
async fn plain_queries_round_trip() {
    let (db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    let port: u16 = conn.query_first("SELECT @@port").await.unwrap().unwrap();
    assert_eq!(port, db.port(), "session must land on the only backend");
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(50))")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, NULL)")
        .await
        .unwrap();
    let rows: Vec<(i32, Option<String>)> = conn
        .query("SELECT id, name FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(1, Some("one".into())), (2, Some("two".into())), (3, None)]
    );
    assert_eq!(conn.affected_rows(), 0);
    conn.query_drop("UPDATE t SET name = 'x' WHERE id < 3")
        .await
        .unwrap();
    assert_eq!(conn.affected_rows(), 2);
    let err = conn
        .query_drop("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1146, "{e:?}"),
        other => panic!("expected server error 1146, got {other:?}"),
    }
    // The session survives a server-side error.
    let n: i64 = conn
        .query_first("SELECT COUNT(*) FROM t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 3);
    conn.disconnect().await.unwrap();
}

#[tokio::test]
async fn multi_statements_return_every_result() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    let mut result = conn
        .query_iter("SELECT 1; SELECT 'a', 'b'; CREATE TABLE m (x INT); SELECT 3")
        .await
        .unwrap();
    let first: Vec<i64> = result.collect().await.unwrap();
    let second: Vec<(String, String)> = result.collect().await.unwrap();
    let third: Vec<mysql_async::Row> = result.collect().await.unwrap();
    let fourth: Vec<i64> = result.collect().await.unwrap();
    drop(result);
    assert_eq!(first, vec![1]);
    assert_eq!(second, vec![("a".to_string(), "b".to_string())]);
    assert!(third.is_empty(), "CREATE TABLE returns no rows");
    assert_eq!(fourth, vec![3]);
    let ok: i64 = conn.query_first("SELECT 42").await.unwrap().unwrap();
    assert_eq!(ok, 42, "the session is usable after a multi-statement");
}

#[tokio::test]
async fn stored_procedure_with_two_result_sets() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    conn.query_drop(
        "CREATE PROCEDURE two_sets() BEGIN SELECT 1 AS a; SELECT 'x' AS b, 'y' AS c; END",
    )
    .await
    .unwrap();
    let mut result = conn.query_iter("CALL two_sets()").await.unwrap();
    let first: Vec<i64> = result.collect().await.unwrap();
    let second: Vec<(String, String)> = result.collect().await.unwrap();
    // The final OK of CALL carries no rows.
    let rest: Vec<mysql_async::Row> = result.collect().await.unwrap();
    drop(result);
    assert_eq!(first, vec![1]);
    assert_eq!(second, vec![("x".to_string(), "y".to_string())]);
    assert!(rest.is_empty());
    let ok: i64 = conn.query_first("SELECT 7").await.unwrap().unwrap();
    assert_eq!(ok, 7);
}

#[tokio::test]
async fn transaction_commit_and_rollback() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    conn.query_drop("CREATE TABLE tx (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO tx VALUES (1)").await.unwrap();
    conn.query_drop("ROLLBACK").await.unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("INSERT INTO tx VALUES (2)").await.unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    let ids: Vec<i32> = conn.query("SELECT id FROM tx").await.unwrap();
    assert_eq!(ids, vec![2]);
}
