//! Key metadata for `--config-info json` and hot reload: type, default, reloadability, meaning.

use super::types::Config;
use serde_json::{json, Value};

/// Every key in file order with a one-line meaning. A test keeps this list equal to
/// the keys `Config::default()` serializes, so nothing can be added without a description.
const KEYS: &[(&str, &str)] = &[
    (
        "proxy.addr",
        "SQL listen address host:port, or several comma-separated (or a list) for port routing",
    ),
    (
        "proxy.pd-addrs",
        "PD endpoints, comma separated; not contacted when only backend-addrs is set",
    ),
    (
        "proxy.backend-addrs",
        "static backends host:port, so the proxy runs without PD",
    ),
    (
        "proxy.advertise-addr",
        "host other components use to reach this proxy (registered in PD)",
    ),
    (
        "proxy.max-connections",
        "maximum client connections, 0 = unlimited",
    ),
    (
        "proxy.conn-buffer-size",
        "per-connection read/write buffer in bytes (1024..16777216)",
    ),
    (
        "proxy.proxy-protocol",
        "PROXY protocol on the SQL port: \"\" (off) or \"v2\"",
    ),
    (
        "proxy.proxy-protocol-networks",
        "sources trusted to send a PROXY header (CIDR, IP or \"*\"); empty = loopback only",
    ),
    (
        "proxy.backend-proxy-protocol",
        "PROXY v2 header to backends: \"\" as proxy-protocol (TiProxy), \"v2\" or \"off\"",
    ),
    (
        "proxy.max-handshakes-per-source",
        "connections from one IP address still in the handshake at once, 0 = unlimited",
    ),
    (
        "proxy.graceful-wait-before-shutdown",
        "seconds to keep serving (reporting unhealthy) before closing on shutdown",
    ),
    (
        "proxy.graceful-close-conn-timeout",
        "seconds to let clients finish transactions on shutdown",
    ),
    (
        "proxy.fail-backend-list",
        "backends treated as failed (for testing failover)",
    ),
    (
        "proxy.failover-timeout",
        "seconds before sessions on a failed backend are closed",
    ),
    (
        "proxy.backend-connect-timeout",
        "seconds to dial and handshake with a backend",
    ),
    (
        "proxy.client-handshake-timeout",
        "seconds a client has to finish its handshake",
    ),
    (
        "proxy.client-read-timeout",
        "seconds a client may fall silent in the middle of sending a command (like MySQL's net_read_timeout), 0 = no limit",
    ),
    (
        "proxy.io-engine",
        "how workers carry sessions: \"epoll\" (own loop), \"tokio\" or \"io-uring\" (falls back to epoll where refused)",
    ),
    (
        "proxy.require-backend-tls",
        "deprecated location of security.require-backend-tls (TiProxy 0.1.x, old TiUP)",
    ),
    ("api.addr", "HTTP status/admin listen address host:port"),
    (
        "api.user",
        "basic-auth user for the admin API; empty = admin paths answer loopback callers only",
    ),
    ("api.password", "basic-auth password for the admin API"),
    (
        "api.allowed-hosts",
        "Host names accepted on state-changing API requests besides IPs, localhost and this machine's names",
    ),
    ("log.level", "trace, debug, info, warn or error"),
    ("log.encoder", "line format: tidb, json or console"),
    ("log.log-file.filename", "log file path; empty = stdout"),
    (
        "log.log-file.max-size",
        "megabytes before the log file is rotated",
    ),
    (
        "log.log-file.max-days",
        "days to keep rotated files, 0 = no age limit",
    ),
    (
        "log.log-file.max-backups",
        "rotated files to keep, 0 = no count limit",
    ),
    (
        "log.query-error-file.filename",
        "file for query errors returned by backends; empty = main log, rate-limited",
    ),
    (
        "security.server-tls.ca",
        "CA to verify client certificates on the SQL port",
    ),
    (
        "security.server-tls.cert",
        "certificate offered to SQL clients",
    ),
    ("security.server-tls.key", "private key of server-tls.cert"),
    (
        "security.server-tls.skip-ca",
        "do not require/verify client certificates",
    ),
    (
        "security.server-tls.auto-certs",
        "generate a self-signed certificate for the SQL port",
    ),
    (
        "security.server-tls.min-tls-version",
        "minimum TLS version for SQL clients (\"\" = 1.2)",
    ),
    (
        "security.server-tls.cert-allowed-cn",
        "common names a client certificate must carry; empty = any the CA signed",
    ),
    (
        "security.server-http-tls.ca",
        "CA to verify HTTP API clients",
    ),
    (
        "security.server-http-tls.cert",
        "certificate of the HTTP API",
    ),
    (
        "security.server-http-tls.key",
        "private key of server-http-tls.cert",
    ),
    (
        "security.server-http-tls.skip-ca",
        "do not verify HTTP API client certificates",
    ),
    (
        "security.server-http-tls.auto-certs",
        "generate a self-signed certificate for the HTTP API",
    ),
    (
        "security.server-http-tls.min-tls-version",
        "minimum TLS version for the HTTP API (\"\" = 1.2)",
    ),
    (
        "security.server-http-tls.cert-allowed-cn",
        "common names a client certificate must carry; empty = any the CA signed",
    ),
    (
        "security.cluster-tls.ca",
        "CA to verify PD and TiDB status ports",
    ),
    (
        "security.cluster-tls.cert",
        "client certificate for PD and TiDB status ports",
    ),
    (
        "security.cluster-tls.key",
        "private key of cluster-tls.cert",
    ),
    (
        "security.cluster-tls.skip-ca",
        "use TLS to PD/TiDB without verifying them",
    ),
    (
        "security.cluster-tls.auto-certs",
        "unused for client roles; kept for symmetry",
    ),
    (
        "security.cluster-tls.min-tls-version",
        "minimum TLS version towards PD/TiDB status (\"\" = 1.2)",
    ),
    (
        "security.cluster-tls.cert-allowed-cn",
        "not used on a client side (refused when set)",
    ),
    (
        "security.sql-tls.ca",
        "CA to verify backends' SQL certificates",
    ),
    (
        "security.sql-tls.cert",
        "client certificate presented to backends",
    ),
    ("security.sql-tls.key", "private key of sql-tls.cert"),
    (
        "security.sql-tls.skip-ca",
        "use TLS to backends without verifying them",
    ),
    (
        "security.sql-tls.auto-certs",
        "unused for client roles; kept for symmetry",
    ),
    (
        "security.sql-tls.min-tls-version",
        "minimum TLS version towards backends (\"\" = 1.2)",
    ),
    (
        "security.sql-tls.cert-allowed-cn",
        "not used on a client side (refused when set)",
    ),
    (
        "security.encryption-key-path",
        "key file of aes256-ctr traffic captures (its first 32 bytes), as TiProxy's",
    ),
    (
        "security.require-backend-tls",
        "refuse backends that do not offer TLS",
    ),
    (
        "balance.policy",
        "balancing policy: resource, location or connection",
    ),
    (
        "balance.label-name",
        "label whose value this proxy shares with the TiDBs its sessions prefer (see labels)",
    ),
    (
        "balance.routing-policy",
        "how new sessions pick among equally scored backends: prefer-idle (default) or random",
    ),
    (
        "balance.routing-rule",
        "TiProxy's backend groups: port or client_cidr route by each TiDB's tiproxy-port / cidr label",
    ),
    (
        "balance.routes",
        "routing rules: sessions from listed ports / client networks use only the listed backends",
    ),
    (
        "balance.conn-count-ratio",
        "move sessions when the busiest backend has more than this times the least busy one's",
    ),
    (
        "balance.max-migrations-per-second",
        "sessions moved per second for balance; drains are not limited",
    ),
    (
        "balance.status.migrations-per-second",
        "sessions drained per second from unhealthy, removed or fail-listed backends; 0 = all at once",
    ),
    (
        "balance.health.migrations-per-second",
        "sessions moved per second off a backend whose queries fail; 0 = built-in (10)",
    ),
    (
        "balance.memory.migrations-per-second",
        "sessions moved per second off a backend near its memory quota; 0 = built-in (5)",
    ),
    (
        "balance.cpu.migrations-per-second",
        "sessions moved per second off a backend with busy CPUs; 0 = built-in (2)",
    ),
    (
        "balance.location.migrations-per-second",
        "sessions moved per second into the proxy's zone; 0 = built-in (10)",
    ),
    (
        "balance.conn-count.migrations-per-second",
        "sessions moved per second to even out session counts; 0 = half the gap a second",
    ),
    (
        "balance.conn-count.count-ratio-threshold",
        "TiProxy's name for conn-count-ratio: used instead when above 1; 0 = keep conn-count-ratio",
    ),
    (
        "proxy.service-account.user",
        "account that may read mysql.user, to move MySQL/MariaDB sessions; empty = not moved",
    ),
    (
        "proxy.service-account.password",
        "password of the service account",
    ),
    (
        "health.interval-ms",
        "milliseconds between backend health checks",
    ),
    (
        "health.timeout-ms",
        "milliseconds one health check may take",
    ),
    (
        "health.failure-threshold",
        "consecutive failures before a backend is unhealthy",
    ),
    (
        "health.recovery-threshold",
        "consecutive successes before it is healthy again",
    ),
    (
        "labels",
        "free-form labels of this proxy, e.g. {zone = \"east\"}",
    ),
    (
        "namespace",
        "namespaces: [[namespace]] with frontend.user(s) routed to backend.instances / backend.labels",
    ),
    (
        "workdir",
        "directory for runtime files (generated certificates, etc.)",
    ),
    (
        "enable-traffic-replay",
        "serve traffic capture and replay (/api/traffic, tiproxyctl traffic); false refuses them",
    ),
];

const LEGACY: &str = "proxy.require-backend-tls";

/// Keys that take effect on a running proxy without a restart.
pub fn is_hot_reloadable(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "proxy.backend-addrs",
        "proxy.max-connections",
        "proxy.fail-backend-list",
        "proxy.failover-timeout",
        "proxy.graceful-wait-before-shutdown",
        "proxy.graceful-close-conn-timeout",
        "proxy.backend-connect-timeout",
        "proxy.client-handshake-timeout",
        "proxy.client-read-timeout",
        "proxy.proxy-protocol-networks",
        "proxy.max-handshakes-per-source",
        "api.allowed-hosts",
        "proxy.service-account.user",
        "proxy.service-account.password",
        "log.level",
        "health",
        "balance",
        "labels",
        "namespace",
        "enable-traffic-replay",
        "security.encryption-key-path",
    ];
    EXACT.contains(&key)
        || [
            "health.",
            "balance.",
            "labels.",
            "proxy.backend-status-addrs.",
        ]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Every key with type, default, hot-reloadability and meaning, as a JSON array.
pub fn config_info_json() -> String {
    let schema = serde_json::to_value(Config::default()).expect("the default config serializes");
    let entries: Vec<Value> = KEYS
        .iter()
        .map(|&(key, description)| {
            let lookup = if key == LEGACY {
                "security.require-backend-tls"
            } else {
                key
            };
            let default = lookup
                .split('.')
                .try_fold(&schema, |v, part| v.get(part))
                .cloned()
                .unwrap_or(Value::Null);
            json!({
                "key": key,
                "type": type_name(&default),
                "default": default,
                "hot_reload": is_hot_reloadable(key),
                "deprecated": key == LEGACY,
                "description": description,
            })
        })
        .collect();
    serde_json::to_string_pretty(&entries).expect("JSON values serialize")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Array(_) => "array",
        Value::Object(_) => "table",
        Value::Null => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn leaves(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        for (k, child) in v.as_object().unwrap() {
            let dotted = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match child {
                Value::Object(_) if dotted != "labels" => leaves(child, &dotted, out),
                _ => {
                    out.insert(dotted);
                }
            }
        }
    }

    #[test]
    fn key_list_matches_the_structs() {
        let mut schema = BTreeSet::new();
        leaves(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut schema,
        );
        let listed: BTreeSet<String> = KEYS
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| k != LEGACY)
            .collect();
        assert_eq!(schema, listed);
    }

    #[test]
    fn info_json_lists_types_defaults_and_reload() {
        let v: Value = serde_json::from_str(&config_info_json()).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), KEYS.len());
        let get = |k: &str| arr.iter().find(|e| e["key"] == k).unwrap().clone();
        let e = get("proxy.max-connections");
        assert_eq!(
            (e["type"].as_str(), e["default"].as_u64()),
            (Some("integer"), Some(0))
        );
        assert_eq!(e["hot_reload"], true);
        let e = get("proxy.addr");
        assert_eq!(e["default"], "0.0.0.0:6000");
        assert_eq!(e["hot_reload"], false);
        assert_eq!(get("proxy.backend-addrs")["type"], "array");
        assert_eq!(get("security.sql-tls.skip-ca")["type"], "boolean");
        assert_eq!(get("labels")["type"], "table");
        assert_eq!(get("health.interval-ms")["hot_reload"], true);
        assert_eq!(get(LEGACY)["deprecated"], true);
    }

    #[test]
    fn reloadable_keys() {
        for k in [
            "log.level",
            "health.timeout-ms",
            "balance.policy",
            "labels",
            "labels.zone",
        ] {
            assert!(is_hot_reloadable(k), "{k}");
        }
        for k in [
            "proxy.addr",
            "api.addr",
            "log.encoder",
            "security.sql-tls.ca",
            "healthz",
        ] {
            assert!(!is_hot_reloadable(k), "{k}");
        }
    }

    /// docs/config.md is the human copy of this table; keep it complete and truthful.
    #[test]
    fn docs_list_every_key_with_its_reload_flag() {
        let docs = include_str!("../../docs/config.md");
        for (key, _) in KEYS {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("docs/config.md has no row for {key}"));
            let hot = if is_hot_reloadable(key) {
                "| yes |"
            } else {
                "| no |"
            };
            assert!(row.contains(hot), "{row}");
        }
    }
}
