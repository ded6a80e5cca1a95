//! Configuration mistakes that would weaken security: a misspelt key under [security] or
//! [api] stops the start instead of leaving auth or TLS silently off, and a config file that
//! cannot be read for a while does not, once back, silently undo changes made through the API.

mod common;

use common::cli::run;
use common::mariadb::MariaDb;
use common::proxy::{Proxy, ProxyConfig};
use common::security::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_misspelt_security_or_api_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, line) in [
        (
            "[proxy]\naddr = \"127.0.0.1:0\"\n[api]\naddr = \"127.0.0.1:0\"\nuser = \"admin\"\npasword = \"x\"\n",
            "api.pasword",
            6,
        ),
        (
            "[proxy]\naddr = \"127.0.0.1:0\"\n[api]\naddr = \"127.0.0.1:0\"\n[security.server-http-tls]\nauto-cert = true\n",
            "security.server-http-tls.auto-cert",
            6,
        ),
    ] {
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_tiproxy"))
                .arg("--config")
                .arg(&path),
            Duration::from_secs(30),
        );
        assert!(!out.ok() && !out.timed_out, "started with {key}: {out:?}");
        assert!(
            out.stderr.contains(&format!("`{key}` at line {line}")),
            "{}",
            out.stderr
        );
    }
    // Elsewhere an unknown key stays a warning, as in TiProxy.
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[proxy]\naddr = \"127.0.0.1:0\"\nmax-conections = 5\n[api]\naddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiproxy"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        still_running,
        "an unknown [proxy] key must not stop the start"
    );
}

#[test]
fn an_unreadable_spell_of_the_config_file_does_not_revert_api_changes() {
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let port = proxy.api_port();
    let put = http(
        port,
        "PUT",
        "/api/admin/config",
        &[],
        "[proxy]\nmax-connections = 77\n",
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let aside = proxy.dir().join("moved-away.toml");
    std::fs::rename(proxy.config_path(), &aside).unwrap();
    // The watcher polls every second: let it see the file missing, then back unchanged.
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::rename(&aside, proxy.config_path()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let config = http(port, "GET", "/api/admin/config", &[], "");
    assert!(
        config.body.contains("max-connections = 77"),
        "the API change was reverted:\n{}\n{}",
        config.body,
        proxy.log_file()
    );
}
