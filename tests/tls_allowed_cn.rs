//! `[security.server-http-tls] cert-allowed-cn`: the status port serves only callers whose
//! certificate, signed by the CA, names an allowed common name, even with `skip-ca = true` (as
//! TiUP writes it), and refuses to start when there is no CA to check certificates against.

mod common;

use common::cli::run;
use common::mariadb::MariaDb;
use common::proxy::{Proxy, ProxyConfig};
use common::security::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn only_allowed_common_names_reach_the_status_port() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let good = Some((pki.client_cert.as_path(), pki.client_key.as_path()));

    // The test client certificate's CN is "tiproxy test".
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = pki.table("server-http-tls", true)
        + "cert-allowed-cn = [\"prometheus\", \"tiproxy test\"]\n";
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    let allowed = curl_health(port, good);
    let none = curl_health(port, None);
    let stranger = curl_health(
        port,
        Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path())),
    );
    eprintln!("allowed CN -> {allowed:?}, no cert -> {none:?}, other CA -> {stranger:?}");
    assert_eq!(allowed, "200");
    assert_eq!(
        none, "000",
        "skip-ca must not make the certificate optional"
    );
    assert_eq!(stranger, "000");
    drop(proxy);

    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = pki.table("server-http-tls", true) + "cert-allowed-cn = [\"tidb\"]\n";
    let proxy = Proxy::start(&cfg);
    let other_name = curl_health(proxy.api_port(), good);
    eprintln!("CN not in the list -> {other_name:?}");
    assert_eq!(
        other_name, "000",
        "a CA-signed certificate with another CN was served"
    );
}

#[test]
fn allowed_common_names_without_a_ca_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[proxy]\nbackend-addrs = [\"127.0.0.1:1\"]\n[security.server-http-tls]\n\
         auto-certs = true\ncert-allowed-cn = [\"tidb\"]\n",
    )
    .unwrap();
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_tiproxy"))
            .arg("--config")
            .arg(&path),
        Duration::from_secs(20),
    );
    eprintln!("{out:?}");
    assert!(!out.ok());
    assert!(
        out.stderr
            .contains("security.server-http-tls.cert-allowed-cn"),
        "{}",
        out.stderr
    );
}
