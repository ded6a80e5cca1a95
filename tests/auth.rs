//! Authentication passes through the proxy: backend errors unchanged, MariaDB's ed25519, and
//! MySQL 8's caching_sha2_password full authentication (via a scripted backend).

mod common;

use common::client::{builder, opts};
use common::mariadb::{MariaDb, APP_PASS, APP_USER, ED_PASS, ED_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use common::scripted::{Event, Script, ScriptedBackend};
use mysql_async::prelude::*;

#[test]
fn login_through_the_proxy_needs_no_auth_switch() {
    // The proxy greets the client with the backend's own scramble and plugin, so a native
    // password answer goes through as it is: the same one round trip as without a proxy.
    let (_db, proxy) = common::db_and_proxy();
    for _ in 0..3 {
        let mut c = RawConn::connect(&proxy.addr());
        c.handshake(APP_USER, APP_PASS, Some("test"))
            .unwrap_or_else(|e| panic!("login failed: {e:?}"));
        assert_eq!(c.auth_switches, 0, "the login took an auth switch");
        assert_eq!(
            c.query_value("SELECT CURRENT_USER()").as_deref(),
            Some("app@%")
        );
        assert!(c.quit());
    }
}

#[test]
fn a_client_slower_than_a_backend_waits_still_logs_in() {
    // The backend connection opened for a new client is signed off after half the handshake
    // allowance (MariaDB would time the half-done handshake out and count it against the
    // proxy's host); a later login dials afresh and takes that path's auth switch.
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.client_handshake_timeout = 2;
    let proxy = Proxy::start(&cfg);
    let mut c = RawConn::connect(&proxy.addr());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    c.handshake(APP_USER, APP_PASS, Some("test"))
        .unwrap_or_else(|e| panic!("a late login failed: {e:?}"));
    assert_eq!(c.auth_switches, 1, "a late login dials afresh");
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
}

#[test]
fn wrong_password_gets_backend_1045_unchanged() {
    let (_db, proxy) = common::db_and_proxy();
    let err = RawConn::login(&proxy.addr(), APP_USER, "wrong", None)
        .err()
        .expect("login with a wrong password must fail");
    assert_eq!(err.code, 1045, "{err:?}");
    assert_eq!(err.sqlstate, "28000", "{err:?}");
    assert!(
        err.message.contains("Access denied for user 'app'"),
        "backend message must reach the client: {err:?}"
    );
    // Unknown users are rejected by the backend the same way.
    let err = RawConn::login(&proxy.addr(), "nobody", "x", None)
        .err()
        .expect("unknown user must fail");
    assert_eq!(err.code, 1045, "{err:?}");
    assert!(err.message.contains("'nobody'"), "{err:?}");
}

#[tokio::test]
async fn wrong_password_via_mysql_async() {
    let (_db, proxy) = common::db_and_proxy();
    let err = mysql_async::Conn::new(opts(proxy.port(), APP_USER, "bad"))
        .await
        .expect_err("must fail");
    match err {
        mysql_async::Error::Server(e) => {
            assert_eq!((e.code, e.state.as_str()), (1045, "28000"), "{e:?}");
            assert!(e.message.contains("'app'"), "{e:?}");
        }
        other => panic!("expected the backend's 1045, got {other:?}"),
    }
}

#[test]
fn ed25519_user_with_mariadb_cli() {
    let (_db, proxy) = common::db_and_proxy();
    let out = common::cli::mariadb(proxy.port(), ED_USER, ED_PASS, &[], "SELECT CURRENT_USER()");
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "edu@%");
    let bad = common::cli::mariadb(proxy.port(), ED_USER, "nope", &[], "SELECT 1");
    assert!(!bad.ok(), "{bad:?}");
    assert!(bad.stderr.contains("1045"), "{bad:?}");
}

#[tokio::test]
async fn ed25519_user_with_mysql_async() {
    let (_db, proxy) = common::db_and_proxy();
    // mysql_common drops a trailing 0x00 from an AuthSwitchRequest's data (it expects the NUL that
    // ends a native-password scramble), so when MariaDB's random 32-byte ed25519 nonce happens to end
    // in 0x00 (1 login in 256) the client signs the wrong nonce and gets 1045, with or without a
    // proxy in between. A second login draws a fresh nonce; a real auth failure fails all three.
    let mut last = None;
    let mut conn = None;
    for _ in 0..3 {
        match mysql_async::Conn::new(opts(proxy.port(), ED_USER, ED_PASS)).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(mysql_async::Error::Server(e)) if e.code == 1045 => last = Some(e),
            Err(other) => panic!("ed25519 login through the proxy failed: {other:?}"),
        }
    }
    let mut conn = conn.unwrap_or_else(|| panic!("three ed25519 logins were refused: {last:?}"));
    let who: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "edu@%");
}

#[tokio::test]
async fn caching_sha2_full_auth_with_rsa_key_exchange() {
    let backend = ScriptedBackend::start("sha2secret", Script::Answer);
    let proxy = Proxy::start(&ProxyConfig::new(vec![backend.addr()]));
    let mut conn = mysql_async::Conn::new(builder(proxy.port(), "shauser", "sha2secret"))
        .await
        .unwrap_or_else(|e| panic!("login failed: {e}; backend saw {:?}", backend.events()));
    let v: String = conn.query_first("SELECT 'x'").await.unwrap().unwrap();
    assert_eq!(v, "scripted");
    drop(conn);
    let events = backend.events();
    let login = events
        .iter()
        .position(|e| matches!(e, Event::Response { user, .. } if user == "shauser"))
        .unwrap_or_else(|| panic!("no login for shauser: {events:?}"));
    // Other connections' events may come in between: the health probe's login, and the one
    // that ends a backend connection opened for a client that left before logging in (the
    // harness's readiness check). Neither knows a password, so a match is this login's.
    let after = &events[login + 1..];
    assert!(
        after.contains(&Event::FastAuthMatched(true)),
        "scramble must be computed against the backend's AuthSwitch scramble: {events:?}"
    );
    assert!(
        after.contains(&Event::FullAuth {
            rsa: true,
            matched: true
        }),
        "RSA-encrypted password must decrypt to the real one: {events:?}"
    );
    assert!(
        events.contains(&Event::Query("SELECT 'x'".into())),
        "{events:?}"
    );
}

#[tokio::test]
async fn caching_sha2_wrong_password_is_rejected_by_backend() {
    let backend = ScriptedBackend::start("right", Script::Answer);
    let proxy = Proxy::start(&ProxyConfig::new(vec![backend.addr()]));
    let err = mysql_async::Conn::new(builder(proxy.port(), "shauser", "wrong"))
        .await
        .expect_err("must fail");
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1045, "{e:?}"),
        other => panic!("expected 1045 from the scripted backend, got {other:?}"),
    }
}
