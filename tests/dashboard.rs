//! The web dashboard in headless Chromium: it renders the live backends and sessions, and
//! says so plainly when the API cannot be reached. Without Chromium it fails under `CI=true`
//! and is skipped with a notice elsewhere (tests/common/tools.rs).

mod common;

use common::ops::*;
use common::tools;
use std::path::PathBuf;
use tokio::process::Command;

fn chromium() -> Option<PathBuf> {
    tools::require("chromium", &["chromium", "chromium-browser"])
}

/// Runs headless Chromium on `url` with `extra` flags; returns its stdout.
async fn run_chromium(bin: &PathBuf, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finishes within 120 s")
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_backends_and_sessions() {
    let Some(bin) = chromium() else {
        return;
    };
    let db = MariaDb::start();
    let dead = format!("127.0.0.1:{}", closed_port());
    let app = start(test_config(&[db.addr(), dead.clone()])).await;
    let mut conn = connect(&app).await;
    use mysql_async::prelude::Queryable;
    conn.query_drop("SELECT 1").await.unwrap();
    let url = format!("http://127.0.0.1:{}/", app.api_addr.port());

    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains(&db.addr()),
        "live backend missing from the page:\n{dom}"
    );
    assert!(dom.contains(&dead), "second backend missing from the page");
    assert!(dom.contains("class=\"session\""), "no session row:\n{dom}");
    assert!(dom.contains(">app<"), "the session's user is shown");
    assert!(dom.contains(tiproxy::version::VERSION));
    assert!(dom.contains("data-api=\"up\""), "the page reached the API");

    if let Ok(path) = std::env::var("TIPROXY_DASHBOARD_SCREENSHOT") {
        let shot = format!("--screenshot={path}");
        run_chromium(
            &bin,
            &url,
            &[&shot, "--window-size=1280,900", "--hide-scrollbars"],
        )
        .await;
    }
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_says_when_the_api_is_unreachable() {
    let Some(bin) = chromium() else {
        return;
    };
    // Serve the page from a proxy, then stop its status port: the page's polls fail.
    let app = start(test_config(&[])).await;
    let page = get(&plain(&app), "/").await.body;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("index.html");
    std::fs::write(&file, page).unwrap();
    let dom = run_chromium(&bin, &format!("file://{}", file.display()), &["--dump-dom"]).await;
    assert!(dom.contains("data-api=\"down\""), "{dom}");
    assert!(dom.contains("class=\"stale\""), "the numbers are hidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_graphs_each_backend_and_offers_the_operator_actions() {
    let Some(bin) = chromium() else {
        return;
    };
    let dbs = [MariaDb::start(), MariaDb::start()];
    let addrs: Vec<String> = dbs.iter().map(|d| d.addr()).collect();
    let mut config = test_config(&addrs);
    // A service account, so a MariaDB session can move.
    for d in &dbs {
        d.sql(
            "CREATE USER 'tiproxy_svc'@'%' IDENTIFIED BY 'svcsecret'; \
             GRANT SELECT ON mysql.* TO 'tiproxy_svc'@'%'",
        );
    }
    config.proxy.service_account.user = "tiproxy_svc".into();
    config.proxy.service_account.password = "svcsecret".into();
    let app = start(config).await;
    use mysql_async::prelude::Queryable;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(&app).await);
    }
    // Traffic over a few stats samples (one every 2 s), some of it failing.
    for round in 0..30 {
        for c in conns.iter_mut() {
            c.query_drop("SELECT 1").await.unwrap();
            if round % 10 == 0 {
                let _ = c.query_drop("SELECT * FROM no_such_table").await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let history = json(&get(&plain(&app), "/api/stats/history").await);
    for a in &addrs {
        let points = history["backends"][a]
            .as_array()
            .expect("a series per backend");
        assert!(points.len() >= 2, "{history}");
        assert!(
            points.iter().any(|p| p["qps"].as_f64() > Some(0.0)),
            "{history}"
        );
    }
    assert!(!history["sessions"].as_array().unwrap().is_empty());
    // One real move for balance, so the page has a reason to show.
    let entry = app.ctx.registry.entries().into_iter().next().unwrap();
    let (from, to) = {
        let on = entry.backend();
        let other = addrs.iter().find(|a| **a != on).unwrap().clone();
        (on, other)
    };
    entry.request_redirect(tiproxy::proxy::registry::Redirect {
        target: Some(to.clone()),
        reason: "conn",
    });
    let moved = eventually(40, || {
        let entry = entry.clone();
        let to = to.clone();
        async move { entry.backend() == to }
    })
    .await;
    assert!(
        moved,
        "the session did not move {from} -> {to}: {}",
        serde_json::to_string(&app.ctx.registry.list()).unwrap()
    );

    let url = format!("http://127.0.0.1:{}/", app.api_addr.port());
    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains(&format!("<td class=\"moves\">conn → {to} ×1</td>")),
        "the move's reason is not shown:\n{dom}"
    );
    for column in ["scores", "blocked"] {
        assert!(
            dom.contains(&format!("<td class=\"{column}\">")),
            "{column}"
        );
    }
    for chart in ["c-qps", "c-p99", "c-err", "c-sessions"] {
        assert!(
            dom.contains(&format!("id=\"{chart}\"><svg")),
            "{chart} not drawn:\n{dom}"
        );
    }
    for a in &addrs {
        assert!(
            dom.contains(&format!("data-series=\"{a}\"")),
            "no line for {a}:\n{dom}"
        );
        assert!(
            dom.contains(&format!("data-from=\"{a}\"")),
            "no move-sessions action for {a}"
        );
    }
    assert!(dom.contains("data-session=\""), "no per-session action");
    let shot = std::env::var("TIPROXY_DASHBOARD_SCREENSHOT").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("tiproxy-dashboard.png")
            .display()
            .to_string()
    });
    run_chromium(
        &bin,
        &url,
        &[
            &format!("--screenshot={shot}"),
            "--window-size=1280,1100",
            "--hide-scrollbars",
        ],
    )
    .await;
    eprintln!("screenshot: {shot}");
    for c in conns {
        c.disconnect().await.unwrap();
    }
}

/// Clicks the dashboard's operator buttons in a real Chromium (through Selenium and the
/// distribution's chromedriver) and prints the page's answer line after each click.
const CLICKER: &str = r#"
import sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.common.exceptions import StaleElementReferenceException

chromium, chromedriver, profile, url, addr = sys.argv[1:]
opts = webdriver.ChromeOptions()
opts.binary_location = chromium
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + profile]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service(chromedriver), options=opts)
try:
    d.set_page_load_timeout(30)
    d.get(url)
    wait = WebDriverWait(d, 20)
    def click(css, done):
        # The page redraws its tables every 2 s; a button found just before a redraw is stale.
        for attempt in range(10):
            try:
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
                d.find_element(By.CSS_SELECTOR, css).click()
                break
            except StaleElementReferenceException:
                if attempt == 9:
                    raise
        wait.until(lambda d: any(w in d.find_element(By.ID, "action-result").text for w in done))
        print(d.find_element(By.ID, "action-result").text, flush=True)
    click('button[data-from="%s"]' % addr, ["asked to move", "failed"])
    click('button[data-drain="%s"]' % addr, ["Drain " + addr + ": done", "failed"])
    click('button[data-undrain="%s"]' % addr, ["Undrain " + addr + ": done", "failed"])
finally:
    d.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_buttons_move_drain_and_undrain_through_the_api() {
    let Some(bin) = chromium() else {
        return;
    };
    let Some(driver) = tools::require("chromedriver", &["chromedriver"]) else {
        return;
    };
    let probe = tokio::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .await;
    if !probe.is_ok_and(|o| o.status.success()) {
        tools::missing("Python module selenium", "import selenium failed");
        return;
    }
    let dbs = [MariaDb::start(), MariaDb::start()];
    let addrs: Vec<String> = dbs.iter().map(|d| d.addr()).collect();
    let app = start(test_config(&addrs)).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(&app).await);
    }
    let backends = json(&get(&plain(&app), "/api/backends").await);
    let busy = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["sessions"].as_u64() > Some(0))
        .expect("a backend with sessions")["addr"]
        .as_str()
        .unwrap()
        .to_owned();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("click.py");
    std::fs::write(&script, CLICKER).unwrap();
    let url = format!("http://127.0.0.1:{}/", app.api_addr.port());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        Command::new("python3")
            .arg(&script)
            .arg(&bin)
            .arg(&driver)
            .arg(dir.path().join("profile"))
            .arg(&url)
            .arg(&busy)
            .env("SE_OFFLINE", "true")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the clicks finish within 180 s")
    .expect("python3 runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("the page said:\n{said}");
    assert!(out.status.success(), "{said}\n{err}");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}\n{err}");
    assert!(
        lines[0].starts_with(&format!("Move sessions off {busy}: "))
            && lines[0].contains("asked to move")
            && !lines[0].contains(": 0 session"),
        "{said}"
    );
    assert_eq!(
        lines[1],
        format!("Drain {busy}: done; fail-backend-list is now [{busy}].")
    );
    assert_eq!(
        lines[2],
        format!("Undrain {busy}: done; fail-backend-list is now [].")
    );
    // The config really went through both changes: the events list them.
    let events = json(&get(&plain(&app), "/api/events").await);
    let config_events = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("fail-backend-list")
        })
        .count();
    assert!(config_events >= 2, "{events}");
    let cfg = json(&get(&plain(&app), "/api/admin/config?format=json").await);
    assert_eq!(cfg["proxy"]["fail-backend-list"], serde_json::json!([]));
    for c in conns {
        let _ = c.disconnect().await;
    }
}
