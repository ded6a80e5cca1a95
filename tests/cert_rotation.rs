//! Certificate rotation: replacing `[security.server-http-tls]` cert/key files on disk makes
//! the status port serve the new certificate to new handshakes, with no restart (the proxy's
//! pid and its open SQL session stay).

mod common;

use common::cli::run;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn write_pair(dir: &Path, cn: &str) {
    let mut p =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    // Key first, then the certificate: a check between the two sees a mismatched pair, which
    // must keep the old one rather than fail.
    std::fs::write(dir.join("key.pem.tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.pem.tmp"), dir.join("key.pem")).unwrap();
    std::fs::write(dir.join("cert.pem.tmp"), cert.pem()).unwrap();
    std::fs::rename(dir.join("cert.pem.tmp"), dir.join("cert.pem")).unwrap();
}

/// The subject the status port presents to a new handshake.
fn served_subject(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -subject"
    );
    run(
        Command::new("sh").args(["-c", &script]),
        Duration::from_secs(20),
    )
    .stdout
    .trim()
    .to_owned()
}

#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "first-cert");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = format!(
        "\n[security.server-http-tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string()
    );
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    let before = served_subject(port);
    assert!(before.contains("first-cert"), "{before:?}");
    let mut session = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap();

    // Modification times have a coarse grain on some filesystems: let the new files differ.
    std::thread::sleep(Duration::from_millis(1100));
    write_pair(dir.path(), "second-cert");
    let after = poll_until(Duration::from_secs(20), || {
        let s = served_subject(port);
        s.contains("second-cert").then_some(s)
    });
    eprintln!("served before: {before:?}; after the files changed: {after:?}");
    assert!(after.is_some(), "the new certificate was never served");
    assert_eq!(
        session.query_value("SELECT 7").as_deref(),
        Some("7"),
        "the open session was dropped"
    );
    assert!(
        proxy.log().contains("TLS certificate reloaded"),
        "{}",
        proxy.log()
    );
}
