//! CA files are re-read when they change: a proxy started with a `sql-tls` CA that does not
//! sign the backend's certificate refuses logins (backend TLS required), and once the right CA
//! is written into the same file new logins verify and succeed, with no restart; the client CA
//! of `server-http-tls` likewise.

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

/// The client CA of `server-http-tls` likewise: a client certificate the configured CA did not
/// sign is refused, and accepted once its CA is written into the same file.
#[test]
fn a_rotated_client_ca_is_used_without_a_restart() {
    use common::security::{curl_health, Pki};
    let db = MariaDb::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (pki, other) = (Pki::new(&a), Pki::new(&b));
    let ca = dir.path().join("client-ca.pem");
    std::fs::copy(&other.ca, &ca).expect("write the old CA");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = format!(
        "\n[security.server-http-tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        ca.display().to_string(),
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    let proxy = Proxy::start(&cfg);
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    assert_eq!(
        curl_health(proxy.api_port(), client),
        "000",
        "a client certificate the old CA did not sign must be refused"
    );
    std::fs::copy(&pki.ca, &ca).expect("write the new CA");
    let served = poll_until(Duration::from_secs(30), || {
        (curl_health(proxy.api_port(), client) == "200").then_some(())
    });
    assert!(
        served.is_some(),
        "the new client CA was not used:\n{}",
        proxy.log()
    );
    eprintln!("client ca reload: refused under the old CA, served after the rotation");
}
