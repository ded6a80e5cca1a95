//! TLS on both legs: clients to the proxy (cert files, auto-certs) and the proxy to a TLS backend.

mod common;

use common::client::{builder, insecure_tls};
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig, ServerTls, SqlTls};
use mysql_async::prelude::*;

/// mysql_async refuses to continue when TLS was asked for and the server does not offer it,
/// so a successful query here proves the client leg is encrypted.
async fn tls_client_query(port: u16) -> String {
    let opts = builder(port, APP_USER, APP_PASS).ssl_opts(insecure_tls());
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .unwrap_or_else(|e| panic!("TLS connect to the proxy failed: {e}"));
    conn.query_first("SELECT CONCAT('ok-', 1)")
        .await
        .unwrap()
        .unwrap()
}

/// The CLI's own view of its connection: `status` prints the cipher in use, if any.
fn cli_cipher(port: u16) -> String {
    let out = common::cli::mariadb(port, APP_USER, APP_PASS, &["--ssl"], "status");
    assert!(out.ok(), "{out:?}");
    out.stdout
        .lines()
        .find(|l| l.starts_with("SSL:"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn client_tls_with_cert_files() {
    // The backend offers TLS too only so this test can also run against MariaDB directly.
    let db = MariaDb::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let certs = common::tls::self_signed(dir.path(), "proxy");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.server_tls = Some(ServerTls::Files {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
    });
    let proxy = Proxy::start(&cfg);
    assert_eq!(tls_client_query(proxy.port()).await, "ok-1");
    let cipher = cli_cipher(proxy.port());
    assert!(
        cipher.contains("Cipher in use"),
        "mariadb --ssl: {cipher:?}"
    );
}

#[tokio::test]
async fn client_tls_with_auto_certs() {
    let db = MariaDb::start_tls();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.server_tls = Some(ServerTls::AutoCerts);
    let proxy = Proxy::start(&cfg);
    assert_eq!(tls_client_query(proxy.port()).await, "ok-1");
    let cipher = cli_cipher(proxy.port());
    assert!(
        cipher.contains("Cipher in use"),
        "mariadb --ssl: {cipher:?}"
    );
}

#[tokio::test]
async fn backend_tls_with_skip_ca() {
    let db = MariaDb::start_tls();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.sql_tls = Some(SqlTls::SkipCa);
    let proxy = Proxy::start(&cfg);
    // A plain client: only the proxy-to-backend leg is encrypted, and the backend says so.
    let mut conn = mysql_async::Conn::new(builder(proxy.port(), APP_USER, APP_PASS))
        .await
        .unwrap();
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap();
    let cipher = row.map(|r| r.1).unwrap_or_default();
    assert!(!cipher.is_empty(), "backend session is not encrypted");
}

#[test]
fn backend_tls_does_not_change_results() {
    let db = MariaDb::start_tls();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.sql_tls = Some(SqlTls::SkipCa);
    let proxy = Proxy::start(&cfg);
    let out = common::cli::mariadb(
        proxy.port(),
        APP_USER,
        APP_PASS,
        &[],
        "SELECT COUNT(*) FROM test.seq_1_to_20000 WHERE seq % 7 = 0",
    );
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "2857");
}
