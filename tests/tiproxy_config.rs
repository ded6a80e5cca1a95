//! A config written with the Go TiProxy's keys (our own file, from its documented key list)
//! starts the proxy: no key is unknown, the ones without effect say why in the log, and the
//! balance factors land on our keys. Keys refused when set are checked in the unit tests.

mod common;

use common::cli::run;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_tiproxy_config_starts_and_says_what_has_no_effect() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_proxy = "tcp-keep-alive = true\nhigh-memory-usage-reject-threshold = 0.9\n\
                       public-endpoints = []\nport-range = []\nbackend-clusters = []\n"
        .into();
    cfg.extra_api = "enable-basic-auth = false\nproxy-protocol = \"\"\n".into();
    cfg.extra_tables = "
[proxy.frontend-keepalive]
enabled = true
[proxy.backend-healthy-keepalive]
enabled = true
idle = 60000000000
cnt = 5
intvl = 3000000000
timeout = 15000000000
[proxy.backend-unhealthy-keepalive]
enabled = true
idle = 10000000000
[security.server-http-tls]
auto-certs = true
rsa-key-size = 4096
autocert-expire-duration = \"72h\"
cert-allowed-cn = []
[security.cluster-tls]
skip-ca = true
[balance]
policy = \"resource\"
routing-rule = \"\"
[balance.status]
migrations-per-second = 5
[balance.conn-count]
migrations-per-second = 2.5
count-ratio-threshold = 1.8
[balance.cpu]
migrations-per-second = 0.5
[ha]
garp-burst-count = 5
[metering]
bucket = \"\"
[advance]
ignore-wrong-namespace = true
"
    .into();
    let proxy = Proxy::start(&cfg);
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).unwrap();
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));

    let log = proxy.log();
    assert!(!log.contains("unknown config key"), "{log}");
    for key in [
        "proxy.tcp-keep-alive",
        "proxy.backend-healthy-keepalive.idle",
        "security.server-http-tls.rsa-key-size",
        "ha.garp-burst-count",
        "advance.ignore-wrong-namespace",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(key) && l.contains("has no effect here")),
            "no word on {key}: {log}"
        );
    }
    let out = run(
        Command::new("curl").args([
            "-sk",
            "--max-time",
            "10",
            &format!(
                "https://127.0.0.1:{}/api/admin/config?format=json",
                proxy.api_port()
            ),
        ]),
        Duration::from_secs(20),
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // TiProxy's per-factor keys are fields of ours, served under the same names.
    assert_eq!(v["balance"]["status"]["migrations-per-second"], 5.0, "{v}");
    assert_eq!(v["balance"]["cpu"]["migrations-per-second"], 0.5, "{v}");
    assert_eq!(
        v["balance"]["conn-count"]["count-ratio-threshold"], 1.8,
        "{v}"
    );
    assert_eq!(v["balance"]["max-migrations-per-second"], 10, "{v}");
}
