//! The `sql-tls` CA file is re-read when it changes: a proxy started with a CA that does not
//! sign the backend's certificate refuses logins (backend TLS required), and once the right CA
//! is written into the same file new logins verify and succeed, with no restart.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig, SqlTls};
use common::raw::RawConn;
use std::time::Duration;

fn login(proxy: &Proxy) -> Result<String, String> {
    let mut c = RawConn::connect(&proxy.addr());
    c.handshake(APP_USER, APP_PASS, Some("test"))
        .map_err(|e| format!("{e:?}"))?;
    c.query_value("SELECT @@port")
        .ok_or_else(|| "no answer".to_string())
}

#[test]
fn a_rotated_backend_ca_is_used_without_a_restart() {
    let db = MariaDb::start_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    let other = common::tls::self_signed(dir.path(), "other");
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&other.cert, &ca).expect("write the wrong CA");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.sql_tls = Some(SqlTls::Ca(ca.clone()));
    cfg.require_backend_tls = true;
    let proxy = Proxy::start(&cfg);

    let refused = login(&proxy);
    assert!(
        refused.is_err(),
        "a backend certificate the CA did not sign must be refused: {refused:?}"
    );

    std::fs::copy(db.tls_cert(), &ca).expect("write the right CA");
    // Checked at most every 2 s on a handshake; 30 s bounds the wait.
    let served = poll_until(Duration::from_secs(30), || login(&proxy).ok());
    assert_eq!(
        served,
        Some(db.port().to_string()),
        "the new CA was not used:\n{}",
        proxy.log()
    );
    assert!(
        proxy.log_file().contains("TLS CA reloaded"),
        "{}",
        proxy.log()
    );
    eprintln!("ca reload: refused with the old CA ({refused:?}), served after the rotation");
}
