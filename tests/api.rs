//! The status port: health, metrics, config GET/PUT, backends, connections, events, basic
//! auth and HTTPS.

mod common;

use common::ops::*;
use mysql_async::prelude::Queryable;
use std::collections::HashSet;
use tiproxy::config::TlsConfig;
use tiproxy::ctl::client::Target;

fn metric_names(text: &str) -> HashSet<String> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text parses");
    let mut names: HashSet<String> = scrape.docs.keys().cloned().collect();
    names.extend(scrape.samples.iter().map(|s| s.metric.clone()));
    names
}

#[tokio::test]
async fn health_config_and_events() {
    let app = start(test_config(&[])).await;
    let t = plain(&app);

    // No backend: 502 with the reason, as TiProxy answers (load balancers and TiUP read it).
    let h = get(&t, "/api/debug/health").await;
    assert_eq!(h.status, 502, "{}", h.body);
    assert!(!json(&h)["unhealthy_reason"].as_str().unwrap().is_empty());
    let checksum = json(&h)["config_checksum"].as_u64().unwrap();
    assert_eq!(checksum, app.running.get().checksum());

    let toml_text = get(&t, "/api/admin/config").await;
    assert_eq!(toml_text.status, 200);
    let parsed: toml::Table = toml::from_str(&toml_text.body).unwrap();
    assert_eq!(parsed["api"]["addr"].as_str(), Some("127.0.0.1:0"));
    let j = json(&get(&t, "/api/admin/config?format=json").await);
    assert_eq!(j["proxy"]["addr"], "127.0.0.1:0");

    // A partial body merges: hot keys apply, others are kept for the next start.
    let ok = put(
        &t,
        "/api/admin/config",
        "[proxy]\nmax-connections = 5\naddr = \"127.0.0.1:7777\"\n",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let rep = json(&ok);
    assert_eq!(rep["applied"], serde_json::json!(["proxy.max-connections"]));
    assert_eq!(rep["restart_required"], serde_json::json!(["proxy.addr"]));
    assert_eq!(app.ctx.settings().max_connections, 5);
    let new_sum = json(&get(&t, "/api/debug/health").await)["config_checksum"]
        .as_u64()
        .unwrap();
    assert_ne!(new_sum, checksum);
    assert_eq!(rep["config_checksum"].as_u64(), Some(new_sum));

    // Bad bodies: 400 with the reason; the running config stays as it was.
    for (body, needle) in [
        ("[proxy]\nmax-connections = \"lots\"\n", "max-connections"),
        ("[proxy\n", "line 1"),
        ("[log]\nlevel = \"loud\"\n", "log.level"),
    ] {
        let bad = put(&t, "/api/admin/config", body).await;
        assert_eq!(bad.status, 400, "{body}");
        let reason = json(&bad)["error"].as_str().unwrap().to_owned();
        assert!(
            reason.contains(needle),
            "{reason:?} should mention {needle}"
        );
        assert_eq!(app.running.get().proxy.max_connections, 5);
        assert_eq!(app.running.get().log.level, "info");
    }

    let events = json(&get(&t, "/api/events").await);
    let msgs: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        msgs.iter().any(|m| m.contains("proxy.max-connections")),
        "{msgs:?}"
    );

    let info = json(&get(&t, "/api/info").await);
    assert_eq!(info["version"], tiproxy::version::VERSION);
    assert_eq!(get(&t, "/no/such/path").await.status, 404);
    assert_eq!(
        t.request("DELETE", "/api/admin/config", None)
            .await
            .unwrap()
            .status,
        405
    );
    let page = get(&t, "/").await;
    assert!(page.body.contains("<title>tiproxy</title>"));

    // Shutting down: health turns 502 with a reason at once.
    app.draining.cancel();
    let h = get(&t, "/api/debug/health").await;
    assert_eq!(h.status, 502);
    assert!(json(&h)["unhealthy_reason"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
}

#[tokio::test]
async fn metrics_parse_and_carry_compat_names() {
    let app = start(test_config(&[])).await;
    let t = plain(&app);
    for path in ["/api/metrics", "/metrics"] {
        let m = get(&t, path).await;
        assert_eq!(m.status, 200);
        let names = metric_names(&m.body);
        for n in [
            "process_start_time_seconds",
            "tiproxy_server_maxprocs",
            "tiproxy_server_connections",
            "tiproxy_server_create_connection_total",
            "tiproxy_session_conn_lifetime_seconds",
            "tiproxy_backend_health_check_seconds",
            // Per-backend families (packets, bytes) have no series without a backend;
            // tests/metrics_families.rs checks them with traffic.
            "tiproxy_traffic_cross_location_bytes",
        ] {
            assert!(names.contains(n), "{n} missing from {path}");
        }
    }
}

#[tokio::test]
async fn basic_auth_guards_all_but_health_and_metrics() {
    let mut c = test_config(&[]);
    c.api.user = "admin".into();
    c.api.password = "pw".into();
    let app = start(c).await;
    let anon = plain(&app);
    for path in ["/api/backends", "/api/connections", "/api/events", "/"] {
        assert_eq!(get(&anon, path).await.status, 401, "{path}");
    }
    assert_eq!(put(&anon, "/api/admin/config", "").await.status, 401);
    // TiDB reads the config without credentials: open, with every secret shown only as set.
    let config = get(&anon, "/api/admin/config").await;
    assert_eq!(config.status, 200);
    assert!(!config.body.contains("\"pw\""), "{}", config.body);
    assert!(
        config.body.contains("password = \"<set>\""),
        "{}",
        config.body
    );
    assert_eq!(
        get(&anon, "/api/debug/health").await.status,
        502,
        "no backend"
    );
    assert_eq!(get(&anon, "/api/metrics").await.status, 200);
    let wrong = Target::new(
        "127.0.0.1",
        app.api_addr.port(),
        &TlsConfig::default(),
        Some(("admin", "no")),
    )
    .unwrap();
    assert_eq!(get(&wrong, "/api/backends").await.status, 401);
    let admin = Target::new(
        "127.0.0.1",
        app.api_addr.port(),
        &TlsConfig::default(),
        Some(("admin", "pw")),
    )
    .unwrap();
    assert_eq!(get(&admin, "/api/backends").await.status, 200);
    assert_eq!(get(&admin, "/").await.status, 200);
}

#[tokio::test]
async fn https_with_auto_certs() {
    let mut c = test_config(&[]);
    c.security.server_http_tls.auto_certs = true;
    let app = start(c).await;
    let tls = TlsConfig {
        skip_ca: true,
        ..Default::default()
    };
    let t = Target::new("127.0.0.1", app.api_addr.port(), &tls, None).unwrap();
    assert!(t.url("/").starts_with("https://"));
    assert_eq!(get(&t, "/api/metrics").await.status, 200);
    assert!(get(&t, "/api/metrics")
        .await
        .body
        .contains("process_start_time_seconds"));
    // Plain HTTP to an HTTPS port gets no HTTP answer.
    assert!(plain(&app)
        .request("GET", "/api/debug/health", None)
        .await
        .is_err());
}

/// The value of `name{backend=addr}` in a scrape of the status port, if the series exists.
async fn backend_counter(t: &Target, name: &str, addr: &str) -> Option<f64> {
    let text = get(t, "/api/metrics").await.body;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("backend") == Some(addr))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_bytes_count_what_crosses_to_and_from_the_backend() {
    let db = MariaDb::start();
    let app = start(test_config(&[db.addr()])).await;
    let t = plain(&app);
    let mut conn = connect(&app).await;
    // A 200,000-byte value back, and a statement of over 50,000 bytes out.
    let big: Option<String> = conn
        .query_first("SELECT REPEAT('x', 200000)")
        .await
        .unwrap();
    assert_eq!(big.map(|s| s.len()), Some(200_000));
    let long = format!("SELECT '{}' IS NOT NULL", "y".repeat(50_000));
    let yes: Option<i64> = conn.query_first(long.as_str()).await.unwrap();
    assert_eq!(yes, Some(1));
    let addr = db.addr();
    let (mut inbound, mut outbound) = (0.0, 0.0);
    for _ in 0..50 {
        inbound = backend_counter(&t, "tiproxy_traffic_inbound_bytes", &addr)
            .await
            .unwrap_or(0.0);
        outbound = backend_counter(&t, "tiproxy_traffic_outbound_bytes", &addr)
            .await
            .unwrap_or(0.0);
        if inbound >= 200_000.0 && outbound >= 50_000.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        inbound >= 200_000.0 && outbound >= 50_000.0,
        "backend traffic not counted: {inbound} bytes in, {outbound} out"
    );
    // Only what crossed: the two statements, their answers and the login around them.
    assert!(inbound < 210_000.0, "{inbound} bytes in");
    assert!(outbound < 60_000.0, "{outbound} bytes out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_backends_connections_and_data_plane_metrics() {
    let db = MariaDb::start();
    let dead = format!("127.0.0.1:{}", closed_port());
    let app = start(test_config(&[db.addr(), dead.clone()])).await;
    let t = plain(&app);

    // The dead backend is found out by the health probe, with its reason.
    let down = eventually(50, || async {
        let v = json(&get(&t, "/api/backends").await);
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["addr"] == dead.as_str() && b["healthy"] == false)
    })
    .await;
    assert!(down, "the dead backend is reported down");

    let mut conn = connect(&app).await;
    for _ in 0..5 {
        let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
    }
    let _ = conn.query_drop("SELECT * FROM no_such_table").await;

    let backends = json(&get(&t, "/api/backends").await);
    let list = backends["backends"].as_array().unwrap();
    let live = list
        .iter()
        .find(|b| b["addr"] == db.addr().as_str())
        .unwrap();
    assert_eq!(live["healthy"], true);
    assert_eq!(live["source"], "static");
    assert_eq!(live["sessions"], 1);
    // One backend can serve, the other is down: health is 200 (502 only when none can).
    let h = get(&t, "/api/debug/health").await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(json(&h)["backends_available"], 1);
    let dead_view = list.iter().find(|b| b["addr"] == dead.as_str()).unwrap();
    assert!(!dead_view["last_error"].as_str().unwrap().is_empty());

    let conns = json(&get(&t, "/api/connections").await);
    let c0 = &conns["connections"][0];
    assert_eq!(c0["user"], "app");
    assert_eq!(c0["backend"], db.addr().as_str());
    assert_eq!(c0["state"], "idle");
    assert!(c0["client"].as_str().unwrap().starts_with("127.0.0.1:"));

    let events = json(&get(&t, "/api/events").await);
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "backend-down" && e["message"].as_str().unwrap().contains(&dead)));

    let text = get(&t, "/api/metrics").await.body;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let has = |name: &str, label: &str, value: &str| {
        scrape
            .samples
            .iter()
            .any(|s| s.metric == name && s.labels.get(label) == Some(value))
    };
    let live_addr = db.addr();
    assert!(has("tiproxy_session_query_total", "backend", &live_addr));
    assert!(has("tiproxy_session_query_total", "cmd_type", "Query"));
    assert!(has(
        "tiproxy_session_query_duration_seconds",
        "backend",
        &live_addr
    ));
    assert!(has(
        "tiproxy_session_query_error_total",
        "backend",
        &live_addr
    ));
    assert!(has(
        "tiproxy_session_handshake_duration_seconds",
        "backend",
        &live_addr
    ));
    assert!(has("tiproxy_backend_b_status", "backend", &dead));
    assert!(has("tiproxy_balance_b_conn", "backend", &live_addr));
    assert!(has("tiproxy_backend_get_backend", "res", "succeed"));
    let names = metric_names(&text);
    for n in [
        "tiproxy_server_connections",
        "tiproxy_server_create_connection_total",
        "tiproxy_backend_health_check_seconds",
        "process_start_time_seconds",
    ] {
        assert!(names.contains(n), "{n} missing");
    }
    let gauge = |name: &str, addr: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("backend") == Some(addr))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(gauge("tiproxy_backend_b_status", &dead), Some(0.0));
    assert_eq!(gauge("tiproxy_backend_b_status", &live_addr), Some(1.0));
    assert_eq!(gauge("tiproxy_balance_b_conn", &live_addr), Some(1.0));

    conn.disconnect().await.unwrap();
    let gone = eventually(50, || async {
        json(&get(&t, "/api/connections").await)["connections"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(gone, "the session leaves /api/connections");
}

/// A TiDB found through PD says so in `/api/backends`.
#[tokio::test]
async fn backends_discovered_through_pd_say_source_pd() {
    use tiproxy::balance::{BackendSource, BackendSpec};
    let app = start(test_config(&[])).await;
    let mut spec = BackendSpec::new_static("127.0.0.1:4999");
    spec.source = BackendSource::Pd;
    app.ctx.backends.set_source(BackendSource::Pd, vec![spec]);
    let v = json(&get(&plain(&app), "/api/backends").await);
    let b = &v["backends"][0];
    assert_eq!(b["addr"], "127.0.0.1:4999");
    assert_eq!(b["source"], "pd", "{v}");
}
