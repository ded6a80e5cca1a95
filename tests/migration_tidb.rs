//! The TiDB migration path against a scripted TiDB: SHOW SESSION_STATES on the old backend,
//! a `tidb_session_token` login on the new one, SET SESSION_STATES with the documented
//! escaping, and the session's state intact afterwards.

mod common;

use common::client::builder;
use common::proxy::{Proxy, ProxyConfig};
use common::tidb::{ScriptedTidb, TidbEvent};
use mysql_async::prelude::*;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn http_post(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("status port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test]
async fn tidb_session_moves_with_its_token_and_states() {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let a = ScriptedTidb::start("pw", tokens.clone());
    let b = ScriptedTidb::start("pw", tokens.clone());
    let proxy = Proxy::start(&ProxyConfig::new(vec![a.addr(), b.addr()]));
    let opts = builder(proxy.port(), "root", "pw").db_name(None::<String>);
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .expect("login through the proxy");
    let first: u16 = conn.query_first("SELECT @@port").await.unwrap().unwrap();
    let (from, to) = if first == a.port() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    conn.query_drop("SET @x = 'it''s \\\\ here'").await.unwrap();
    conn.query_drop("USE db1").await.unwrap();
    let resp = http_post(
        proxy.api_port(),
        &format!("/api/admin/migrate?from={}", from.addr()),
    );
    assert!(resp.contains("\"requested\":1"), "{resp}");
    let mut moved = false;
    for _ in 0..40 {
        let p: u16 = conn.query_first("SELECT @@port").await.unwrap().unwrap();
        if p == to.port() {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(moved, "never moved:\n{}", proxy.log());
    let x: String = conn.query_first("SELECT @x").await.unwrap().unwrap();
    assert_eq!(x, "it's \\\\ here");
    let db: String = conn
        .query_first("SELECT DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db, "db1");
    assert!(from
        .events()
        .contains(&TidbEvent::Query("SHOW SESSION_STATES".into())));
    let ev = to.events();
    assert!(
        ev.contains(&TidbEvent::Login {
            plugin: "tidb_session_token".into(),
            accepted: true
        }),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, TidbEvent::Query(q) if q.starts_with("SET SESSION_STATES '"))),
        "{ev:?}"
    );
}
