//! What the logs keep: a backend's error text with its literals scrubbed (a duplicate key's
//! value, a password in a mistyped ALTER USER), the error code and digest kept; failed logins
//! audited with the client's address; log files readable by their owner only.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::os::unix::fs::PermissionsExt;

const ROW_SECRET: &str = "alice-private-7731@example.com";
const TYPO_PASSWORD: &str = "Typo-Pa55word-19";

#[test]
fn query_errors_are_logged_without_their_literals_and_files_are_private() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let qlog = dir.path().join("query-errors.log");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_tables = format!(
        "\n[log.query-error-file]\nfilename = {:?}\n",
        qlog.display().to_string()
    );
    let proxy = Proxy::start(&cfg);
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).expect("login");
    c.query("CREATE TABLE IF NOT EXISTS emails (e VARCHAR(64) PRIMARY KEY)")
        .expect("create");
    c.query(&format!("INSERT INTO emails VALUES ('{ROW_SECRET}')"))
        .expect("insert");
    let dup = c
        .query(&format!("INSERT INTO emails VALUES ('{ROW_SECRET}')"))
        .unwrap_err();
    assert_eq!(dup.code, 1062);
    assert!(
        dup.message.contains(ROW_SECRET),
        "the client still sees its own error"
    );
    let typo = c
        .query(&format!("ALTER USER app IDENTIFIED BYY '{TYPO_PASSWORD}'"))
        .unwrap_err();
    assert_eq!(typo.code, 1064);
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
    // A failed login, audited with the client's address.
    assert!(RawConn::login(&proxy.addr(), APP_USER, "wrong-password", None).is_err());

    // The proxy writes its lines just after the client has its answer: wait for them.
    let found = common::net::poll_until(std::time::Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&qlog).unwrap_or_default();
        let logged = text.matches("query failed on backend").count() >= 2
            && proxy.log_file().contains("audit: login failed");
        logged.then_some(text)
    });
    let qtext = found.unwrap_or_else(|| panic!("no query errors logged\n{}", proxy.log()));
    let main = proxy.log_file();
    for text in [&qtext, &main] {
        assert!(
            !text.contains(ROW_SECRET),
            "a row's value was logged:\n{text}"
        );
        assert!(
            !text.contains(TYPO_PASSWORD),
            "a password was logged:\n{text}"
        );
    }
    assert!(
        qtext.contains("code=1062") && qtext.contains("code=1064"),
        "{qtext}"
    );
    assert!(qtext.contains("digest="), "{qtext}");
    assert!(qtext.contains("Duplicate entry '?'"), "{qtext}");
    assert!(
        main.contains("audit: login failed")
            && main.contains("127.0.0.1")
            && main.contains("user=app"),
        "{main}"
    );
    for f in [qlog.clone(), proxy.dir().join("tiproxy.log")] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
    eprintln!(
        "query-error log lines:\n{}",
        qtext
            .lines()
            .filter(|l| l.contains("code="))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
