//! A web page on another origin, opened in headless Chromium on the proxy's own host, tries
//! to change the proxy through the admin's browser: a form POST with a text/plain body, a
//! no-cors POST to migrate, and a PUT. With no [api] user set, the browser is a loopback
//! caller, so only the same-origin checks stand between the page and the config; they must
//! refuse all three while the page's requests demonstrably arrive.

mod common;

use common::mariadb::MariaDb;
use common::proxy::{Proxy, ProxyConfig};
use common::security::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.is_file())
    })
}

fn attacker_page(api: u16) -> String {
    format!(
        r#"<!doctype html><html><body><div id="out">ran</div>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="http://127.0.0.1:{api}/api/admin/config" enctype="text/plain" target="sink">
<input name="[proxy]&#10;max-connections" value="1"></form>
<script>
const out = document.getElementById('out');
fetch('http://127.0.0.1:{api}/api/admin/migrate?from=127.0.0.1:1', {{method: 'POST', mode: 'no-cors'}})
  .then(() => out.textContent += ' migrate-sent', () => out.textContent += ' migrate-failed');
fetch('http://127.0.0.1:{api}/api/admin/config', {{method: 'PUT', body: '[proxy]\nmax-connections = 2\n'}})
  .then(() => out.textContent += ' put-answered', () => out.textContent += ' put-blocked');
document.getElementById('f').submit();
</script></body></html>"#
    )
}

/// Serves `page` to every request for at most `rounds` accepts or 60 s.
fn serve_page(page: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..3000 {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).ok();
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    port
}

#[test]
fn a_page_on_another_origin_cannot_change_the_proxy_through_the_browser() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is required under CI=true (scripts/install-deps.sh installs it)"
        );
        eprintln!("NOTICE: chromium is not installed; skipping the cross-origin browser test");
        return;
    };
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let api = proxy.api_port();
    let evil = serve_page(attacker_page(api));
    let profile = tempfile::tempdir().unwrap();
    let out = common::cli::run(
        Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://127.0.0.1:{evil}/")),
        Duration::from_secs(120),
    );
    let dom = out.stdout;
    let log = common::net::poll_until(Duration::from_secs(10), || {
        let log = proxy.log_file();
        (log.matches("audit: API change refused as cross-site")
            .count()
            >= 2)
            .then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page's requests never arrived\nDOM: {dom}\n{}",
            proxy.log()
        )
    });
    let config = http(api, "GET", "/api/admin/config", &[], "");
    eprintln!(
        "browser: page DOM says {:?}; refusals logged: {}",
        dom.split("id=\"out\">")
            .nth(1)
            .and_then(|s| s.split('<').next()),
        log.matches("refused as cross-site").count()
    );
    assert!(dom.contains("ran"), "the page did not run: {dom}");
    assert!(
        dom.contains("put-blocked"),
        "the cross-origin PUT was not blocked: {dom}"
    );
    assert!(
        config.body.contains("max-connections = 0"),
        "the page changed the config:\n{}",
        config.body
    );
    for path in ["path=/api/admin/migrate", "path=/api/admin/config"] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused as cross-site") && l.contains(path)),
            "{path} not refused:\n{log}"
        );
    }
}
