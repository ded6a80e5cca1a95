//! The status port attacked as issue 14 found it: reading secrets, installing a backend that
//! harvests passwords, cross-site and DNS-rebinding requests, password guessing. Each attack
//! must fail while real users keep logging in through the proxy to a real MariaDB.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use common::security::*;
use std::time::Duration;

const API_PASSWORD: &str = "api-s3cret-9f2";
const SERVICE_PASSWORD: &str = "svc-s3cret-41c";

fn guarded_proxy(db: &MariaDb) -> Proxy {
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = format!("user = \"admin\"\npassword = \"{API_PASSWORD}\"\n");
    cfg.service_account = Some(("tiproxy_svc".into(), SERVICE_PASSWORD.into()));
    Proxy::start(&cfg)
}

fn real_user_logs_in(proxy: &Proxy) {
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, None)
        .unwrap_or_else(|e| panic!("real login failed: {e:?}\n{}", proxy.log()));
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
}

#[test]
fn no_unauthenticated_or_cross_site_request_installs_a_password_harvesting_backend() {
    let db = MariaDb::start();
    let harvester = HarvestingBackend::start(Duration::from_secs(120));
    let proxy = guarded_proxy(&db);
    let port = proxy.api_port();
    let admin = basic("admin", API_PASSWORD);
    let attack = format!("[proxy]\nbackend-addrs = [\"{}\"]\n", harvester.addr);

    // Reading the secrets: the config is open (TiDB reads it) but shows them only as set.
    for path in ["/api/admin/config", "/api/admin/config?format=json"] {
        let r = http(port, "GET", path, &[], "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            !r.body.contains(API_PASSWORD),
            "{path} served the API password"
        );
        assert!(
            !r.body.contains(SERVICE_PASSWORD),
            "{path} served the service password"
        );
        assert!(r.body.contains("<set>"), "{}", r.body);
        // Account names are half a login: shown to an admin only.
        for name in ["tiproxy_svc", "\"admin\""] {
            assert!(!r.body.contains(name), "{path} named the account {name}");
        }
        let r = http(port, "GET", path, std::slice::from_ref(&admin), "");
        assert!(r.body.contains("tiproxy_svc"), "{}", r.body);
    }

    let attempts: Vec<(&str, Vec<String>, &str, u16)> = vec![
        ("no credentials", vec![], "PUT", 401),
        (
            "POST alias with a text/plain body (a simple cross-site request)",
            vec![admin.clone(), "Content-Type: text/plain".into()],
            "POST",
            405,
        ),
        (
            "POST alias with a form body",
            vec![
                admin.clone(),
                "Content-Type: application/x-www-form-urlencoded".into(),
            ],
            "POST",
            405,
        ),
        (
            "a page on another origin, with the admin's credentials cached in the browser",
            vec![admin.clone(), "Origin: http://evil.example".into()],
            "PUT",
            403,
        ),
        (
            "a browser that says the request is cross-site",
            vec![admin.clone(), "Sec-Fetch-Site: cross-site".into()],
            "PUT",
            403,
        ),
        (
            "DNS rebinding: the attacker's name resolved to the proxy",
            vec![
                admin.clone(),
                format!("Host: rebind.evil.example:{port}"),
                format!("Origin: http://rebind.evil.example:{port}"),
            ],
            "PUT",
            403,
        ),
    ];
    for (what, headers, method, want) in &attempts {
        let r = http(port, method, "/api/admin/config", headers, &attack);
        assert_eq!(r.status, *want, "{what}: {}", r.body);
        real_user_logs_in(&proxy);
    }
    // Moving sessions and listing users are guarded the same way.
    assert_eq!(
        http(port, "POST", "/api/admin/migrate?from=x", &[], "").status,
        401
    );
    assert_eq!(http(port, "GET", "/api/connections", &[], "").status, 401);

    // Nothing changed: only the real backend is known, and the harvester saw nobody.
    let backends = http(
        port,
        "GET",
        "/api/backends",
        std::slice::from_ref(&admin),
        "",
    );
    assert_eq!(backends.status, 200);
    assert!(backends.body.contains(&db.addr()), "{}", backends.body);
    assert!(
        !backends.body.contains(&harvester.addr),
        "{}",
        backends.body
    );
    for _ in 0..5 {
        real_user_logs_in(&proxy);
    }
    assert_eq!(
        harvester.accepted(),
        0,
        "a client was sent to the harvester"
    );

    // The control: the admin's own same-origin PUT works, so the refusals above are the checks
    // at work and not a broken endpoint.
    let ok = http(
        port,
        "PUT",
        "/api/admin/config",
        &[admin.clone(), format!("Origin: http://127.0.0.1:{port}")],
        "[proxy]\nmax-connections = 500\n",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let log = proxy.log_file();
    assert!(
        log.contains("audit: API changed the config") && log.contains("127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains("audit: API change refused as cross-site"),
        "{log}"
    );
    assert!(log.contains("audit: API authentication failed"), "{log}");
    assert!(!log.contains(API_PASSWORD) && !log.contains(SERVICE_PASSWORD));
    eprintln!(
        "{} attacks refused; harvester connections: {}; real logins during them all succeeded",
        attempts.len() + 2,
        harvester.accepted()
    );
}

#[test]
fn guessing_the_api_password_is_slowed_and_logged_while_health_stays_open() {
    let db = MariaDb::start();
    let proxy = guarded_proxy(&db);
    let port = proxy.api_port();
    let mut statuses = Vec::new();
    for i in 0..12 {
        let guess = basic("admin", &format!("guess-{i}"));
        statuses.push(http(port, "GET", "/api/backends", &[guess], "").status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // Now even the right password waits for the window to pass: guessing gains nothing.
    let right = http(
        port,
        "GET",
        "/api/backends",
        &[basic("admin", API_PASSWORD)],
        "",
    );
    assert_eq!(right.status, 429);
    assert!(
        right.head.to_ascii_lowercase().contains("retry-after:"),
        "{}",
        right.head
    );
    // Health and metrics are not behind auth and not limited: tiup and Prometheus keep reading.
    assert_eq!(http(port, "GET", "/api/debug/health", &[], "").status, 200);
    assert_eq!(http(port, "GET", "/api/metrics", &[], "").status, 200);
    real_user_logs_in(&proxy);
    let log = proxy.log_file();
    let failures = log
        .lines()
        .filter(|l| l.contains("audit: API authentication failed") && l.contains("127.0.0.1"))
        .count();
    assert_eq!(
        failures, 10,
        "each failure logged with the caller's address:\n{log}"
    );
    eprintln!("12 guesses: {statuses:?}; {failures} failure lines logged");
}
