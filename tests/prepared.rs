//! Binary-protocol prepared statements through the proxy with mysql_async.

mod common;

use common::client::app_conn;
use mysql_async::prelude::*;
use mysql_async::{Params, Value};

#[tokio::test]
async fn prepare_execute_close() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    conn.query_drop("CREATE TABLE p (id INT PRIMARY KEY, name VARCHAR(20), score DOUBLE)")
        .await
        .unwrap();
    let insert = conn
        .prep("INSERT INTO p (id, name, score) VALUES (?, ?, ?)")
        .await
        .unwrap();
    for i in 0..20 {
        conn.exec_drop(&insert, (i, format!("n{i}"), i as f64 / 2.0))
            .await
            .unwrap();
    }
    conn.close(insert).await.unwrap();
    let select = conn
        .prep("SELECT id, name, score FROM p WHERE id >= ? ORDER BY id")
        .await
        .unwrap();
    let rows: Vec<(i32, String, f64)> = conn.exec(&select, (15,)).await.unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0], (15, "n15".to_string(), 7.5));
    // Execute again with other parameters on the same statement id.
    let rows: Vec<(i32, String, f64)> = conn.exec(&select, (19,)).await.unwrap();
    assert_eq!(rows, vec![(19, "n19".to_string(), 9.5)]);
    let null: Option<Option<String>> = conn.exec_first("SELECT ?", (Value::NULL,)).await.unwrap();
    assert_eq!(null, Some(None));
    conn.close(select).await.unwrap();
}

#[tokio::test]
async fn statement_with_many_parameters() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    // 300 parameters: a null bitmap and type list much longer than one byte.
    let n = 300;
    let placeholders = vec!["?"; n].join(" + ");
    let stmt = conn.prep(format!("SELECT {placeholders}")).await.unwrap();
    assert_eq!(stmt.num_params() as usize, n);
    let params: Vec<Value> = (1..=n as i64).map(Value::from).collect();
    let sum: i64 = conn
        .exec_first(&stmt, Params::Positional(params))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sum, (n * (n + 1) / 2) as i64);
    conn.close(stmt).await.unwrap();
}

#[tokio::test]
async fn prepare_error_is_the_backends() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    let err = conn.prep("SELEC nonsense ?").await.unwrap_err();
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1064, "{e:?}"),
        other => panic!("expected syntax error 1064, got {other:?}"),
    }
    let one: i64 = conn.exec_first("SELECT ?", (1,)).await.unwrap().unwrap();
    assert_eq!(one, 1);
}
