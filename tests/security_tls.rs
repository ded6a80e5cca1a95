//! Client certificates enforced wherever a CA is configured: `[security.server-http-tls] ca`
//! for the status port and `[security.server-tls] ca` for SQL clients, tried with curl and the
//! stock mariadb CLI without a certificate, with a stranger's and with a good one. `skip-ca`
//! (as TiUP writes it for the status port) keeps certificates optional.

mod common;

use common::cli::{mariadb, run};
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::security::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_status_port_requires_a_client_certificate_when_it_has_a_ca() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = pki.table("server-http-tls", false);
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();

    let none = curl_health(port, None);
    let stranger = curl_health(port, Some((&pki.stranger_cert, &pki.stranger_key)));
    let good = curl_health(port, Some((&pki.client_cert, &pki.client_key)));
    eprintln!("status port with a CA: no cert -> {none:?}, stranger's cert -> {stranger:?}, good cert -> {good:?}");
    assert_eq!(none, "000", "served without a certificate");
    assert_eq!(stranger, "000", "served a certificate from another CA");
    assert_eq!(good, "200");
    // tiproxyctl with the CA and its certificate.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_tiproxyctl"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--ca")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key)
            .arg("health"),
        Duration::from_secs(30),
    );
    assert!(out.ok(), "{out:?}");
}

#[test]
fn skip_ca_keeps_status_port_certificates_optional_as_tiup_writes_it() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = pki.table("server-http-tls", true);
    let proxy = Proxy::start(&cfg);
    assert_eq!(curl_health(proxy.api_port(), None), "200");
}

#[test]
fn sql_clients_need_a_certificate_from_the_ca() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = pki.table("server-tls", false);
    let proxy = Proxy::start(&cfg);
    let port = proxy.port();
    let path = |p: &std::path::Path| p.display().to_string();

    let plain = mariadb(port, APP_USER, APP_PASS, &["--skip-ssl"], "SELECT 1");
    let tls_no_cert = mariadb(port, APP_USER, APP_PASS, &["--ssl"], "SELECT 1");
    let stranger = mariadb(
        port,
        APP_USER,
        APP_PASS,
        &[
            "--ssl",
            &format!("--ssl-cert={}", path(&pki.stranger_cert)),
            &format!("--ssl-key={}", path(&pki.stranger_key)),
        ],
        "SELECT 1",
    );
    let good = mariadb(
        port,
        APP_USER,
        APP_PASS,
        &[
            "--ssl",
            &format!("--ssl-ca={}", path(&pki.ca)),
            &format!("--ssl-cert={}", path(&pki.client_cert)),
            &format!("--ssl-key={}", path(&pki.client_key)),
        ],
        "SELECT 1",
    );
    eprintln!(
        "SQL port with a CA: plaintext -> {:?}; TLS without cert -> {:?}; stranger -> {:?}; good -> {:?}",
        plain.stderr.trim(),
        tls_no_cert.stderr.trim(),
        stranger.stderr.trim(),
        good.stdout.trim()
    );
    assert!(!plain.ok(), "plaintext login served");
    assert!(
        plain.stderr.contains("9005")
            && plain
                .stderr
                .contains("accepts only TLS connections with a client certificate")
            && !plain.stderr.contains("Bad handshake"),
        "the plaintext client is told why, in its own words: {}",
        plain.stderr
    );
    assert!(!tls_no_cert.ok(), "TLS login without a certificate served");
    assert!(!stranger.ok(), "a certificate from another CA was accepted");
    assert!(good.ok(), "{good:?}\n{}", proxy.log());
    assert_eq!(good.stdout.trim(), "1");
}
