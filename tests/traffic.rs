//! Traffic capture and replay through a real MariaDB: sessions' commands are captured into
//! files that decode to those commands (passwords left out), replayed as another user they
//! recreate the rows, a read-only replay skips the writes, jobs are shown and cancelled, and
//! every traffic path needs the `[api]` credentials.

mod common;

use common::cli::run;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tiproxy::proxy::traffic::cipher::Key;
use tiproxy::proxy::traffic::format::{Meta, Reader, Record};

const REPLAY_USER: &str = "replayer";
const REPLAY_PASS: &str = "Rpl-pw-9137";

/// (status, body) of one form request; `auth` adds the test's `[api]` credentials.
fn call(port: u16, method: &str, path: &str, form: &[(&str, &str)], auth: bool) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if auth {
        cmd.args(["-u", "admin:s3cret"]);
    }
    for (k, v) in form {
        cmd.args(["--data-urlencode", &format!("{k}={v}")]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run(&mut cmd, Duration::from_secs(30)).stdout;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

fn ctl(port: u16, args: &[&str]) -> common::cli::CmdOut {
    run(
        Command::new(env!("CARGO_BIN_EXE_tiproxyctl"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--user", "admin", "--password", "s3cret"])
            .args(args),
        Duration::from_secs(30),
    )
}

fn show(port: u16) -> Vec<Value> {
    let (status, body) = call(port, "GET", "/api/traffic/show", &[], true);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap_or_else(|e| panic!("show is not JSON ({e}): {body}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `show` until the last job has left "running"/"stopping"; bounded to 60 s.
fn wait_finished(port: u16) -> Value {
    for _ in 0..240 {
        let jobs = show(port);
        let last = jobs.last().cloned().unwrap_or(Value::Null);
        if !matches!(last["status"].as_str(), Some("running" | "stopping")) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the traffic job did not finish: {:?}", show(port));
}

fn decode(dir: &Path) -> (Meta, Vec<Record>) {
    decode_with(dir, None)
}

fn decode_with(dir: &Path, key: Option<&Key>) -> (Meta, Vec<Record>) {
    let meta = Meta::read(dir).expect("meta");
    let mut records = Vec::new();
    for f in &meta.files {
        let mut r = Reader::open(&dir.join(f), key).expect("traffic file");
        while let Some(rec) = r.next_record().expect("record") {
            records.push(rec);
        }
    }
    (meta, records)
}

fn queries(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Command { payload, .. } if payload.first() == Some(&3) => {
                Some(String::from_utf8_lossy(&payload[1..]).into_owned())
            }
            _ => None,
        })
        .collect()
}

fn rows(db: &MariaDb) -> String {
    db.sql("SELECT GROUP_CONCAT(v ORDER BY v) FROM test.traffic_t")
}

#[test]
fn capture_then_replay_recreates_the_writes() {
    let db = MariaDb::start();
    db.sql(&format!(
        "CREATE TABLE test.traffic_t (v INT PRIMARY KEY); \
         CREATE USER '{REPLAY_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{REPLAY_PASS}'); \
         GRANT ALL ON *.* TO '{REPLAY_USER}'@'%'"
    ));
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = "user = \"admin\"\npassword = \"s3cret\"\n".into();
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    let out = tempfile::tempdir().unwrap();
    let capture_dir = out.path().join("cap");
    let capture_dir_s = capture_dir.display().to_string();

    // Every traffic path is an admin path.
    for (method, path) in [
        ("GET", "/api/traffic/show"),
        ("POST", "/api/traffic/capture"),
        ("POST", "/api/traffic/replay"),
        ("POST", "/api/traffic/cancel"),
    ] {
        assert_eq!(call(port, method, path, &[], false).0, 401, "{path}");
    }
    // Encryption without a key file is refused, not ignored; nothing starts.
    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/capture",
        &[
            ("output", &capture_dir_s),
            ("duration", "1m"),
            ("encrypt-method", "aes256-ctr"),
        ],
        true,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("aes256-ctr"), "{body}");
    // So are TiProxy replay options this proxy lacks, by name.
    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/replay",
        &[
            ("input", &capture_dir_s),
            ("username", REPLAY_USER),
            ("cmdstarttime", "2026-01-01T00:00:00Z"),
        ],
        true,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cmdstarttime"), "{body}");
    assert!(show(port).is_empty());

    let rt = tokio::runtime::Runtime::new().unwrap();
    // A session opened before the capture: its state (database) is recorded when first seen.
    let mut early = rt.block_on(common::client::app_conn(proxy.port()));

    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/capture",
        &[("output", &capture_dir_s), ("duration", "10m")],
        true,
    );
    assert_eq!((status, body.as_str()), (200, "capture started"));
    let jobs = show(port);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["type"], "capture");
    assert_eq!(jobs[0]["status"], "running");
    assert_eq!(jobs[0]["output"], capture_dir_s.as_str());
    // One job at a time.
    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/replay",
        &[
            ("input", &capture_dir_s),
            ("username", REPLAY_USER),
            ("password", REPLAY_PASS),
        ],
        true,
    );
    assert_eq!(status, 409, "{body}");

    rt.block_on(async {
        early
            .query_drop("INSERT INTO traffic_t VALUES (1), (2)")
            .await
            .unwrap();
        let mut late = common::client::app_conn(proxy.port()).await;
        late.exec_drop("INSERT INTO traffic_t VALUES (?)", (10,))
            .await
            .unwrap();
        late.exec_drop("INSERT INTO traffic_t VALUES (?)", (11,))
            .await
            .unwrap();
        late.query_drop("CREATE USER 'tmp_u'@'%' IDENTIFIED BY 'Leak-me-4242'")
            .await
            .unwrap();
        // A prepared SET PASSWORD: its prepare and its executions are left out.
        late.exec_drop(
            "SET PASSWORD FOR 'tmp_u'@'%' = PASSWORD('Leak-me-5353')",
            (),
        )
        .await
        .unwrap();
        late.query_drop("DROP USER 'tmp_u'@'%'").await.unwrap();
        late.disconnect().await.unwrap();
        early.disconnect().await.unwrap();
    });

    // tiproxyctl ends the capture; the files and meta are complete once cancel answers.
    let out_ctl = ctl(port, &["traffic", "cancel"]);
    assert!(out_ctl.ok(), "{out_ctl:?}");
    assert!(out_ctl.stdout.starts_with("stopped: "), "{out_ctl:?}");
    let out_ctl = ctl(port, &["traffic", "show"]);
    assert!(out_ctl.ok(), "{out_ctl:?}");
    let shown: Value = serde_json::from_str(&out_ctl.stdout).expect("show JSON");
    assert_eq!(shown[0]["status"], "canceled", "{shown}");
    assert_eq!(shown[0]["error"], "manually stopped", "{shown}");
    assert!(shown[0]["end_time"].is_string(), "{shown}");

    let (meta, records) = decode(&capture_dir);
    let mode = std::fs::metadata(&capture_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "the capture directory is the proxy user's only"
    );
    assert!(meta.compress);
    assert!(meta.files[0].ends_with(".log.gz"), "{meta:?}");
    assert!(meta.filtered_cmds >= 1, "CREATE USER is left out: {meta:?}");
    assert_eq!(meta.dropped_cmds, 0, "{meta:?}");
    let q = queries(&records);
    assert!(
        q.iter()
            .any(|s| s == "INSERT INTO traffic_t VALUES (1), (2)"),
        "{q:?}"
    );
    assert!(q.iter().any(|s| s == "DROP USER 'tmp_u'@'%'"), "{q:?}");
    let mut raw = Vec::new();
    for r in &records {
        r.encode(&mut raw);
    }
    let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("INSERT INTO traffic_t"), "the search sees the records");
    assert!(!has("Leak-me-4242"), "a password was captured");
    assert!(
        !has("Leak-me-5353"),
        "a prepared statement's password was captured"
    );
    assert!(!has("SET PASSWORD"), "a prepared SET PASSWORD was captured");
    let early_state = records.iter().find_map(|r| match r {
        Record::Session { user, init, .. } if user == APP_USER => Some(init.clone()),
        _ => None,
    });
    let init = early_state.expect("a session record for the app user");
    assert!(
        init.iter()
            .any(|s| String::from_utf8_lossy(s).contains("test")),
        "the session's database is recorded: {init:?}"
    );
    assert!(
        records.iter().any(|r| matches!(r, Record::Prepared { text, .. } if text == b"INSERT INTO traffic_t VALUES (?)")),
        "{records:?}"
    );
    assert_eq!(
        meta.cmds as usize,
        records
            .iter()
            .filter(|r| matches!(r, Record::Command { .. }))
            .count()
    );

    // Replay as another user against the proxy's backend: the writes happen again.
    db.sql("DELETE FROM test.traffic_t; DROP USER IF EXISTS 'tmp_u'@'%'");
    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/replay",
        &[
            ("input", &capture_dir_s),
            ("username", REPLAY_USER),
            ("password", REPLAY_PASS),
            ("speed", "10"),
        ],
        true,
    );
    assert_eq!((status, body.as_str()), (200, "replay started"));
    let job = wait_finished(port);
    assert_eq!(job["type"], "replay", "{job}");
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["progress"], "100%", "{job}");
    assert_eq!(job["username"], REPLAY_USER, "{job}");
    assert!(job["replayed_cmds"].as_u64().unwrap_or(0) >= 4, "{job}");
    assert_eq!(rows(&db), "1,2,10,11");

    // Read-only: the inserts are skipped.
    db.sql("DELETE FROM test.traffic_t");
    let out_ctl = ctl(
        port,
        &[
            "traffic",
            "replay",
            "--input",
            &capture_dir_s,
            "--username",
            REPLAY_USER,
            "--password",
            REPLAY_PASS,
            "--read-only",
            "--speed",
            "10",
        ],
    );
    assert!(out_ctl.ok(), "{out_ctl:?}");
    let job = wait_finished(port);
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["readonly"], true, "{job}");
    assert!(job["skipped_cmds"].as_u64().unwrap_or(0) >= 3, "{job}");
    assert_eq!(rows(&db), "NULL");

    // A wrong password stops the replay with the backend's refusal.
    let (status, _) = call(
        port,
        "POST",
        "/api/traffic/replay",
        &[
            ("input", &capture_dir_s),
            ("username", REPLAY_USER),
            ("password", "wrong"),
        ],
        true,
    );
    assert_eq!(status, 200);
    let job = wait_finished(port);
    assert_eq!(job["status"], "canceled", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("refused"),
        "{job}"
    );

    // The replay password is never shown or logged.
    let shown = serde_json::to_string(&show(port)).unwrap();
    assert!(!shown.contains(REPLAY_PASS), "{shown}");
    assert!(
        !proxy.log().contains(REPLAY_PASS),
        "the replay password was logged"
    );
    assert_eq!(show(port).len(), 4);
}

#[test]
fn a_slow_replay_is_cancelled() {
    let db = MariaDb::start();
    db.sql("CREATE TABLE test.slow_t (v INT)");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = "user = \"admin\"\npassword = \"s3cret\"\n".into();
    let mut proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("cap").display().to_string();
    let form = [
        ("output", dir.as_str()),
        ("duration", "10m"),
        ("compress", "false"),
    ];
    assert_eq!(
        call(port, "POST", "/api/traffic/capture", &form, true).0,
        200
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::client::app_conn(proxy.port()).await;
        c.query_drop("INSERT INTO slow_t VALUES (1)").await.unwrap();
        // At a tenth of the speed, this gap keeps the replay busy for 30 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.query_drop("INSERT INTO slow_t VALUES (2)").await.unwrap();
        c.disconnect().await.unwrap();
    });
    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/cancel",
        &[("type", "capture")],
        true,
    );
    assert_eq!(status, 200);
    assert!(body.starts_with("stopped: "), "{body}");
    let (meta, _) = decode(Path::new(&dir));
    assert!(
        meta.files[0].ends_with(".log") && !meta.compress,
        "{meta:?}"
    );

    let form = [
        ("input", dir.as_str()),
        ("username", APP_USER),
        ("password", APP_PASS),
        ("speed", "0.1"),
    ];
    assert_eq!(
        call(port, "POST", "/api/traffic/replay", &form, true).0,
        200
    );
    assert_eq!(show(port).last().unwrap()["status"], "running");
    let (status, body) = call(
        port,
        "POST",
        "/api/traffic/cancel",
        &[("type", "capture")],
        true,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "no privilege to stop the job")
    );
    let (status, body) = call(port, "POST", "/api/traffic/cancel", &[], true);
    assert_eq!(status, 200);
    assert!(body.starts_with("stopped: "), "{body}");
    let job = show(port).last().cloned().unwrap();
    assert_eq!(job["status"], "canceled", "{job}");
    assert_eq!(job["error"], "manually stopped", "{job}");
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM test.slow_t WHERE v = 2"),
        "1",
        "the second insert is only the original's"
    );
    let (status, body) = call(port, "POST", "/api/traffic/cancel", &[], true);
    assert_eq!((status, body.as_str()), (200, "no job running"));

    // A shutdown ends a running capture with its files complete.
    let dir2 = out.path().join("cap2").display().to_string();
    let form = [("output", dir2.as_str()), ("duration", "10m")];
    assert_eq!(
        call(port, "POST", "/api/traffic/capture", &form, true).0,
        200
    );
    rt.block_on(async {
        let mut c = common::client::app_conn(proxy.port()).await;
        c.query_drop("SELECT 42").await.unwrap();
        c.disconnect().await.unwrap();
    });
    proxy.signal("TERM");
    assert!(
        proxy.wait_exit(Duration::from_secs(60)).is_some(),
        "the proxy did not exit"
    );
    let (meta, records) = decode(Path::new(&dir2));
    assert!(
        queries(&records).iter().any(|q| q == "SELECT 42"),
        "{records:?}"
    );
    assert!(meta.cmds >= 1, "{meta:?}");
}

/// PUT of a config fragment through the status port, with the test's credentials.
fn put_config(port: u16, toml: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "-X",
        "PUT",
        "-w",
        "\n%{http_code}",
    ])
    .args(["-u", "admin:s3cret", "--data-binary", toml])
    .arg(format!("http://127.0.0.1:{port}/api/admin/config"));
    let out = run(&mut cmd, Duration::from_secs(30)).stdout;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// TiProxy's `enable-traffic-replay = false` refuses every traffic path, with the key named;
/// like TiProxy's, it takes effect on a running proxy.
#[test]
fn enable_traffic_replay_false_refuses_the_traffic_paths() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = "user = \"admin\"\npassword = \"s3cret\"\n".into();
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    assert_eq!(call(port, "GET", "/api/traffic/show", &[], true).0, 200);

    let (status, body) = put_config(port, "enable-traffic-replay = false\n");
    assert_eq!(status, 200, "{body}");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("cap").display().to_string();
    for (method, path, form) in [
        ("GET", "/api/traffic/show", vec![]),
        (
            "POST",
            "/api/traffic/capture",
            vec![("output", dir.as_str()), ("duration", "1m")],
        ),
        ("POST", "/api/traffic/cancel", vec![]),
    ] {
        let (status, body) = call(port, method, path, &form, true);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.contains("enable-traffic-replay = false"),
            "{path}: {body}"
        );
    }
    assert!(
        !Path::new(&dir).exists(),
        "a refused capture writes nothing"
    );
    let shown = ctl(port, &["traffic", "show"]);
    assert!(
        format!("{}{}", shown.stdout, shown.stderr).contains("disabled"),
        "tiproxyctl says why: {shown:?}"
    );

    let (status, body) = put_config(port, "enable-traffic-replay = true\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(port, "GET", "/api/traffic/show", &[], true).0, 200);
}

/// TiProxy's `encrypt-method = aes256-ctr` with `security.encryption-key-path`: the files hold
/// no SQL in clear, read back only with the key, and replay with it; without the key the
/// replay is refused and says why.
#[test]
fn an_encrypted_capture_replays_with_its_key_only() {
    let db = MariaDb::start();
    db.sql("CREATE TABLE test.enc_t (v INT)");
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = "user = \"admin\"\npassword = \"s3cret\"\n".into();
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    let out = tempfile::tempdir().unwrap();
    let key_file = out.path().join("capture.key").display().to_string();
    std::fs::write(&key_file, b"0123456789abcdef0123456789abcdef\n").unwrap();
    let (status, body) = put_config(
        port,
        &format!("[security]\nencryption-key-path = {key_file:?}\n"),
    );
    assert_eq!(status, 200, "{body}");

    let dir = out.path().join("cap").display().to_string();
    let form = [
        ("output", dir.as_str()),
        ("duration", "10m"),
        ("encrypt-method", "aes256-ctr"),
    ];
    let (status, body) = call(port, "POST", "/api/traffic/capture", &form, true);
    assert_eq!(status, 200, "{body}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::client::app_conn(proxy.port()).await;
        c.query_drop("INSERT INTO enc_t VALUES (42)").await.unwrap();
        c.disconnect().await.unwrap();
    });
    let (status, body) = call(port, "POST", "/api/traffic/cancel", &[], true);
    assert_eq!(status, 200, "{body}");
    assert_eq!(wait_finished(port)["status"], "canceled");

    let meta = Meta::read(Path::new(&dir)).unwrap();
    assert_eq!(meta.encryption_method, "aes256-ctr");
    for f in &meta.files {
        let stored = std::fs::read(Path::new(&dir).join(f)).unwrap();
        assert!(
            !stored.windows(5).any(|w| w == b"enc_t"),
            "{f} holds SQL in clear"
        );
        assert!(Reader::open(&Path::new(&dir).join(f), None).is_err());
    }
    let key = Key::load(&key_file).unwrap();
    let (_, records) = decode_with(Path::new(&dir), Some(&key));
    assert!(
        queries(&records)
            .iter()
            .any(|q| q == "INSERT INTO enc_t VALUES (42)"),
        "{:?}",
        queries(&records)
    );

    db.sql("DELETE FROM test.enc_t");
    let replay = [
        ("input", dir.as_str()),
        ("username", APP_USER),
        ("password", APP_PASS),
    ];
    let (status, body) = call(port, "POST", "/api/traffic/replay", &replay, true);
    assert_eq!(status, 200, "{body}");
    let done = wait_finished(port);
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(db.sql("SELECT GROUP_CONCAT(v) FROM test.enc_t"), "42");

    let (status, body) = put_config(port, "[security]\nencryption-key-path = \"\"\n");
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(port, "POST", "/api/traffic/replay", &replay, true);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("encrypted") && body.contains("encryption-key-path"),
        "{body}"
    );
}
