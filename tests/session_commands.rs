//! Session-level commands through the proxy: ping, COM_INIT_DB, reset connection, change user.

mod common;

use common::client::{app_conn, opts};
use common::mariadb::{APP_PASS, APP_USER};
use common::raw::RawConn;
use mysql_async::prelude::*;
use mysql_async::ChangeUserOpts;

#[tokio::test]
async fn ping_keeps_the_session() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    for _ in 0..5 {
        conn.ping().await.unwrap();
    }
    let one: i64 = conn.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}

#[test]
fn com_init_db_switches_database() {
    let (db, proxy) = common::db_and_proxy();
    db.sql("CREATE DATABASE other");
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap();
    assert_eq!(c.query_value("SELECT DATABASE()").as_deref(), Some("test"));
    c.init_db("other").unwrap();
    assert_eq!(c.query_value("SELECT DATABASE()").as_deref(), Some("other"));
    let err = c.init_db("missing_db").unwrap_err();
    assert_eq!(err.code, 1049, "{err:?}");
    assert_eq!(c.query_value("SELECT DATABASE()").as_deref(), Some("other"));
}

#[tokio::test]
async fn reset_connection_clears_session_state() {
    let (_db, proxy) = common::db_and_proxy();
    let mut conn = app_conn(proxy.port()).await;
    conn.query_drop("SET @marker = 'before'").await.unwrap();
    conn.query_drop("CREATE TEMPORARY TABLE tmp (x INT)")
        .await
        .unwrap();
    assert!(
        conn.reset().await.unwrap(),
        "server supports COM_RESET_CONNECTION"
    );
    let marker: Option<Option<String>> = conn.query_first("SELECT @marker").await.unwrap();
    assert_eq!(marker, Some(None), "user variable must be gone after reset");
    let err = conn.query_drop("SELECT * FROM tmp").await.unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1146),
        "{err:?}"
    );
}

#[tokio::test]
async fn change_user_to_another_user_and_back() {
    let (db, proxy) = common::db_and_proxy();
    db.sql("CREATE USER 'other'@'%' IDENTIFIED BY 'otherpw'; GRANT SELECT ON *.* TO 'other'@'%'");
    let mut conn = mysql_async::Conn::new(opts(proxy.port(), APP_USER, APP_PASS))
        .await
        .unwrap();
    let who: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "app@%");
    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some("other".into()))
            .with_pass(Some("otherpw".into())),
    )
    .await
    .unwrap();
    let who: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "other@%");
    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some(APP_USER.into()))
            .with_pass(Some(APP_PASS.into()))
            .with_db_name(Some("test".into())),
    )
    .await
    .unwrap();
    let (who, dbname): (String, String) = conn
        .query_first("SELECT CURRENT_USER(), DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((who.as_str(), dbname.as_str()), ("app@%", "test"));
}
