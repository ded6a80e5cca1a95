//! The Go TiProxy's status-port paths and tiproxyctl groups, as its operators call them: the
//! manual health override, redirect, backend metrics, `/metrics/`, the debug group at the root.
//! Changes need the `[api]` credentials (pprof is tests/pprof.rs, traffic tests/traffic.rs).

mod common;

use common::cli::run;
use common::mariadb::MariaDb;
use common::proxy::{Proxy, ProxyConfig};
use std::process::Command;
use std::time::Duration;

/// (status, body) of one curl request; `auth` adds the test credentials.
fn call(port: u16, method: &str, path: &str, body: Option<&str>, auth: bool) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if auth {
        cmd.args(["-u", "admin:s3cret"]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run(&mut cmd, Duration::from_secs(20)).stdout;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.trim().to_owned(), body.to_owned())
}

#[test]
fn tiproxy_paths_answer_as_tiproxy_and_need_credentials_to_change_state() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = "user = \"admin\"\npassword = \"s3cret\"\n".into();
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();

    assert_eq!(call(port, "GET", "/api/debug/health", None, false).0, "200");
    // The override is an admin's: refused without credentials, and nothing changes.
    let off = r#"{"healthy": false, "reason": "maintenance window"}"#;
    assert_eq!(
        call(port, "PUT", "/api/debug/health", Some(off), false).0,
        "401"
    );
    assert_eq!(call(port, "GET", "/api/debug/health", None, false).0, "200");
    assert_eq!(
        call(port, "PUT", "/api/debug/health", Some(off), true).0,
        "200"
    );
    for path in ["/api/debug/health", "/debug/health"] {
        let (status, body) = call(port, "GET", path, None, false);
        eprintln!("{path} after the override: {status} {body}");
        assert_eq!(status, "502", "{path}");
        assert!(body.contains("maintenance window"), "{body}");
    }
    assert_eq!(
        call(port, "PUT", "/api/debug/health", Some("nope"), true).0,
        "400"
    );
    assert_eq!(
        call(port, "DELETE", "/api/debug/health", None, true).0,
        "200"
    );
    assert_eq!(call(port, "GET", "/api/debug/health", None, false).0, "200");

    assert_eq!(
        call(port, "POST", "/api/debug/redirect", None, false).0,
        "401"
    );
    let (status, body) = call(port, "POST", "/api/debug/redirect", None, true);
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("requested"), "{body}");

    let (status, body) = call(port, "GET", "/api/backend/metrics", None, true);
    assert_eq!(status, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get(db.addr()).is_some(), "{body}");

    let (status, body) = call(port, "GET", "/metrics/", None, false);
    assert_eq!(status, "200");
    assert!(body.contains("tiproxy_server_connections"), "{body}");

    // Namespaces are served (tests/namespace.rs): only behind the credentials here.
    for (method, path) in [
        ("GET", "/api/admin/namespace"),
        ("PUT", "/api/admin/namespace/ns1"),
    ] {
        assert_eq!(call(port, method, path, None, false).0, "401", "{path}");
    }
    let (status, body) = call(port, "PUT", "/api/admin/namespace/ns1", Some("{}"), true);
    assert_eq!(
        status, "400",
        "a namespace with no backends is refused: {body}"
    );
    assert!(body.contains("no backends"), "{body}");

    // Traffic capture and replay are served (tests/traffic.rs): only behind the credentials.
    assert_eq!(call(port, "GET", "/api/traffic/show", None, false).0, "401");
    let args = ["traffic", "show"];
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_tiproxyctl"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--user", "admin", "--password", "s3cret"])
            .args(args),
        Duration::from_secs(30),
    );
    eprintln!("tiproxyctl {args:?}: {out:?}");
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "[]", "{out:?}");
}
