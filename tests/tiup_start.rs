//! The binary started and stopped exactly as `tiup playground` and `tiup cluster` do: their
//! command lines, cwd, forced config keys, log file and stop signals, with PD absent.

mod common;

use common::mariadb::MariaDb;
use common::tiup::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn tiproxy() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tiproxy"))
}

/// Playground starts TiProxy with a PD that may never answer and stops it last, after PD, with
/// whichever signal it got itself (scale-in sends SIGQUIT). Each signal gets its own instance;
/// the last one's PD accepts connections and never answers, like a PD that hung mid-request.
#[test]
fn playground_start_then_each_stop_signal_with_pd_gone() {
    // Never accepted from: the kernel completes connections into the backlog and that is all.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_pd = black_hole.local_addr().unwrap().port();
    let mut runs = Vec::new();
    let mut all_ports = Ports::distinct(5).into_iter();
    for (sig, pd) in [
        ("QUIT", closed_port()),
        ("INT", closed_port()),
        ("TERM", closed_port()),
        ("HUP", closed_port()),
        ("QUIT", hung_pd),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = all_ports.next().expect("five instances, five port pairs");
        let log = dir.path().join("tiproxy.log");
        let config = playground_config(ports, pd, &log, "");
        let proc = start_like_playground(tiproxy(), dir.path(), &config);
        runs.push((sig, dir, ports, log, proc));
    }
    for (sig, _dir, ports, log, proc) in &mut runs {
        assert!(
            wait_listening(ports.sql, Duration::from_secs(30), proc),
            "SQL port {} must listen with PD absent (instance for SIG{sig}):\n{}",
            ports.sql,
            read_log(log)
        );
        let (code, _) = http_get(ports.status, "/api/debug/health")
            .unwrap_or_else(|e| panic!("status port {}: {e}\n{}", ports.status, read_log(log)));
        // Serving, but with no TiDB to send anyone to: 502, as TiProxy answers.
        assert_eq!(code, 502, "health with PD absent");
    }
    for (sig, _, _, _, proc) in &runs {
        proc.signal(sig);
    }
    for (sig, _, _, log, proc) in &mut runs {
        let status = proc.wait_exit(STOP_BOUND);
        assert!(
            status.is_some_and(|s| s.success()),
            "SIG{sig} with PD gone must end tiproxy cleanly within {STOP_BOUND:?}, got {status:?}:\n{}",
            read_log(log)
        );
        let text = read_log(log);
        assert!(
            text.contains("tiproxy starting"),
            "the log named by log.log-file.filename (also stdout/stderr) must hold the log:\n{text}"
        );
    }
}

/// A cluster deploy dir with a real backend: ready (SQL port), up (health 2xx), uptime
/// (`process_start_time_seconds`), a query through it, then systemd's SIGTERM.
#[test]
fn cluster_layout_serves_and_stops_on_sigterm() {
    let db = MariaDb::start();
    let deploy = tempfile::tempdir().expect("tempdir");
    let ports = Ports::free();
    let log = deploy.path().join("log/tiproxy.log");
    let config = format!(
        "[proxy]\npd-addrs = \"127.0.0.1:{pd}\"\naddr = \"127.0.0.1:{sql}\"\nadvertise-addr = \"127.0.0.1\"\n\
         backend-addrs = [\"{backend}\"]\n\n[api]\naddr = \"127.0.0.1:{status}\"\n\n\
         [log.log-file]\nfilename = {log:?}\n",
        pd = closed_port(),
        sql = ports.sql,
        status = ports.status,
        backend = db.addr(),
        log = log.display().to_string(),
    );
    let mut proc = start_like_cluster(tiproxy(), deploy.path(), &config);
    assert!(
        wait_listening(ports.sql, Duration::from_secs(120), &mut proc),
        "SQL port must listen:\n{}",
        read_log(&log)
    );

    let (code, body) = http_get(ports.status, "/api/debug/health").expect("health");
    assert!((200..300).contains(&code), "health {code}: {body}");
    let (code, text) = http_get(ports.status, "/api/metrics").expect("metrics");
    assert_eq!(code, 200, "metrics: {text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    let start = scrape
        .samples
        .iter()
        .find(|s| s.metric == "process_start_time_seconds")
        .expect("process_start_time_seconds is exported");
    assert!(
        matches!(start.value, prometheus_parse::Value::Gauge(v) if v > 1.0e9),
        "process_start_time_seconds is a Unix time: {:?}",
        start.value
    );

    let out = common::cli::mariadb(ports.sql, "app", "secret", &[], "SELECT 40 + 2");
    assert!(
        out.ok(),
        "query through the proxy: {out:?}\n{}",
        read_log(&log)
    );
    assert_eq!(out.stdout.trim(), "42");

    proc.signal("TERM");
    let status = proc.wait_exit(STOP_BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must stop tiproxy within {STOP_BOUND:?}, got {status:?}:\n{}",
        read_log(&log)
    );
    assert!(read_log(&log).contains("tiproxy starting"));
}

/// With TLS on, cluster writes the three TLS sections (server-http-tls with skip-ca) and
/// expects HTTPS on the status port.
#[test]
fn cluster_tls_config_serves_https_status() {
    let deploy = tempfile::tempdir().expect("tempdir");
    let tls = deploy.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let certs = common::tls::self_signed(&tls, "tiproxy");
    let ca = tls.join("ca.crt");
    std::fs::copy(&certs.cert, &ca).unwrap();
    let ports = Ports::free();
    let log = deploy.path().join("log/tiproxy.log");
    let mut config = format!(
        "[proxy]\npd-addrs = \"127.0.0.1:{pd}\"\naddr = \"127.0.0.1:{sql}\"\nadvertise-addr = \"127.0.0.1\"\n\n\
         [api]\naddr = \"127.0.0.1:{status}\"\n\n[log.log-file]\nfilename = {log:?}\n",
        pd = closed_port(),
        sql = ports.sql,
        status = ports.status,
        log = log.display().to_string(),
    );
    for section in ["cluster-tls", "server-http-tls", "sql-tls"] {
        config.push_str(&format!(
            "\n[security.{section}]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            ca.display().to_string(),
            certs.cert.display().to_string(),
            certs.key.display().to_string(),
        ));
        if section == "server-http-tls" {
            config.push_str("skip-ca = true\n");
        }
    }
    let mut proc = start_like_cluster(tiproxy(), deploy.path(), &config);
    assert!(
        wait_listening(ports.sql, Duration::from_secs(120), &mut proc),
        "SQL port must listen with TLS configured:\n{}",
        read_log(&log)
    );
    let (ok, out) = run(
        Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!(
                "https://127.0.0.1:{}/api/debug/health",
                ports.status
            )),
        Duration::from_secs(20),
    );
    // An HTTPS answer to a client without a certificate (TiUP writes skip-ca = true beside the
    // CA, which keeps client certificates optional); 502 because no TiDB is up behind PD.
    assert!(
        ok && out.trim() == "502",
        "HTTPS health: {out}\n{}",
        read_log(&log)
    );
    proc.signal("TERM");
    assert!(
        proc.wait_exit(STOP_BOUND).is_some_and(|s| s.success()),
        "SIGTERM with TLS on:\n{}",
        read_log(&log)
    );
}
