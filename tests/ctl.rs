//! tiproxyctl against a running proxy: output, --json, config get/set, exit codes.

mod common;

use common::ops::*;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ctl(port: u16, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiproxyctl"));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run tiproxyctl");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("tiproxyctl finishes")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_print_tables_json_and_exit_codes() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let app = start(test_config(std::slice::from_ref(&dead))).await;
    let port = app.api_addr.port();

    // The only backend is dead: health says so and exits 1 (the status port answers 502).
    let h = ctl(port, &["health"], None).await;
    assert_eq!(h.code, 1, "{}", h.stderr);
    assert!(h.stdout.starts_with("unhealthy: "), "{}", h.stdout);

    let b = ctl(port, &["backends"], None).await;
    assert_eq!(b.code, 0);
    assert!(b.stdout.starts_with("ADDRESS"));
    assert!(b.stdout.contains(&dead));

    let c = ctl(port, &["connections", "--json"], None).await;
    assert_eq!(c.code, 0);
    let v: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert!(v["connections"].as_array().unwrap().is_empty());
    let c = ctl(port, &["connections"], None).await;
    assert!(c.stdout.starts_with("ID  CLIENT"), "{}", c.stdout);

    let g = ctl(port, &["config", "get"], None).await;
    assert_eq!(g.code, 0);
    let t: toml::Table = toml::from_str(&g.stdout).unwrap();
    assert!(t.contains_key("proxy"));
    let gj = ctl(port, &["--json", "config", "get"], None).await;
    let v: serde_json::Value = serde_json::from_str(&gj.stdout).unwrap();
    assert_eq!(v["api"]["addr"], "127.0.0.1:0");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("part.toml");
    std::fs::write(&file, "[proxy]\nmax-connections = 9\n").unwrap();
    let s = ctl(
        port,
        &["config", "set", "--input", file.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert!(
        s.stdout.contains("applied: proxy.max-connections"),
        "{}",
        s.stdout
    );
    assert_eq!(app.ctx.settings().max_connections, 9);

    let s = ctl(
        port,
        &["config", "set"],
        Some("[proxy]\nmax-connections = 11\n"),
    )
    .await;
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert_eq!(app.ctx.settings().max_connections, 11);

    let bad = ctl(
        port,
        &["config", "set"],
        Some("[proxy]\nmax-connections = \"x\"\n"),
    )
    .await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("HTTP 400"), "{}", bad.stderr);
    assert!(bad.stderr.contains("max-connections"), "{}", bad.stderr);
    assert_eq!(app.ctx.settings().max_connections, 11);

    let e = ctl(port, &["events"], None).await;
    assert!(e.stdout.contains("config changed"), "{}", e.stdout);

    app.draining.cancel();
    let h = ctl(port, &["health"], None).await;
    assert_eq!(h.code, 1);
    assert!(h.stdout.contains("unhealthy: the proxy is shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_version_and_unreachable() {
    let port = closed_port();
    let u = ctl(port, &["health"], None).await;
    assert_eq!(u.code, 3);
    assert!(
        u.stderr
            .contains(&format!("http://127.0.0.1:{port}/api/debug/health")),
        "{}",
        u.stderr
    );

    let v = ctl(port, &["-v"], None).await;
    assert_eq!(v.code, 0);
    let expected = format!(
        "version {}, commit {}",
        tiproxy::version::VERSION,
        tiproxy::version::GIT_HASH
    );
    assert!(v.stdout.trim_end().ends_with(&expected), "{}", v.stdout);
    assert!(v.stdout.contains("tiproxyctl"));

    assert_eq!(ctl(port, &[], None).await.code, 2);
    assert_eq!(ctl(port, &["--no-such-flag", "health"], None).await.code, 2);
    assert_eq!(ctl(port, &["frobnicate"], None).await.code, 2);
    let missing = ctl(
        port,
        &["config", "set", "--input", "/no/such/file.toml"],
        None,
    )
    .await;
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("/no/such/file.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_basic_auth() {
    let mut c = test_config(&[]);
    c.security.server_http_tls.auto_certs = true;
    c.api.user = "admin".into();
    c.api.password = "pw".into();
    let app = start(c).await;
    let port = app.api_addr.port();
    // Health needs no credentials; with no backend it reports unhealthy (exit 1), not 401.
    let h = ctl(port, &["-k", "health"], None).await;
    assert_eq!(h.code, 1, "{}", h.stderr);
    assert!(h.stdout.starts_with("unhealthy: "), "{}", h.stdout);
    let denied = ctl(port, &["-k", "backends"], None).await;
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("401"), "{}", denied.stderr);
    let ok = ctl(
        port,
        &["-k", "--user", "admin", "--password", "pw", "backends"],
        None,
    )
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let plain = ctl(port, &["health"], None).await;
    assert_eq!(
        plain.code, 3,
        "plain HTTP to an HTTPS port is a connection failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_a_file_or_the_environment_and_a_warning_over_plain_http() {
    let mut c = test_config(&[]);
    c.api.user = "admin".into();
    c.api.password = "pw".into();
    let app = start(c).await;
    let port = app.api_addr.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "pw\n").unwrap();
    let run = |args: Vec<String>, env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiproxyctl"));
        cmd.args(["--host", "127.0.0.1", "--port", &port])
            .args(args)
            .env_remove("TIPROXYCTL_PASSWORD")
            .stdin(Stdio::null());
        if let Some(v) = env {
            cmd.env("TIPROXYCTL_PASSWORD", v);
        }
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
                .await
                .expect("tiproxyctl finishes")
                .unwrap()
        }
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--user".into(), "admin".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("backends".into());
        v
    };
    let from_file = run(args(&["--password-file", file.to_str().unwrap()]), None).await;
    assert!(from_file.status.success(), "{from_file:?}");
    let stderr = String::from_utf8_lossy(&from_file.stderr);
    assert!(stderr.contains("plain HTTP"), "no warning: {stderr}");
    let from_env = run(args(&[]), Some("pw")).await;
    assert!(from_env.status.success(), "{from_env:?}");
    let wrong_env = run(args(&[]), Some("nope")).await;
    assert_eq!(wrong_env.status.code(), Some(1), "{wrong_env:?}");
    let missing = run(args(&["--password-file", "/no/such/pw"]), None).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/pw"));
}
