//! Semantic checks on a parsed configuration: ranges, enumerations and address shapes.

use super::error::ConfigError;
use super::types::{normalize_log_level, normalize_tls_version, split_pd_addrs, Config};
use std::net::Ipv6Addr;

const MIN_CONN_BUFFER: usize = 1024;
const MAX_CONN_BUFFER: usize = 16 * 1024 * 1024;

impl Config {
    /// Check every value that serde's types cannot express. The first problem wins,
    /// because one precise message is more useful than a pile of follow-on errors.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(source) = super::namespace::check_all(&self.namespace) {
            return Err(ConfigError::Namespace {
                count: self.namespace.len(),
                source,
                line: None,
            });
        }
        let p = &self.proxy;
        let listens = super::routes::listen_addrs(&p.addr);
        if listens.is_empty() {
            return Err(ConfigError::invalid(
                "proxy.addr",
                quoted(&p.addr),
                "expected host:port",
            ));
        }
        for a in &listens {
            check_addr("proxy.addr", a, AddrKind::Listen)?;
        }
        check_addr("api.addr", &self.api.addr, AddrKind::Listen)?;
        for a in &p.backend_addrs {
            check_addr("proxy.backend-addrs", a, AddrKind::Remote)?;
        }
        for (sql, status) in &p.backend_status_addrs {
            check_addr("proxy.backend-status-addrs", sql, AddrKind::Remote)?;
            check_addr("proxy.backend-status-addrs", status, AddrKind::Remote)?;
        }
        for a in split_pd_addrs(&p.pd_addrs) {
            check_addr("proxy.pd-addrs", &a, AddrKind::Remote)?;
        }
        for a in &p.fail_backend_list {
            if a.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "proxy.fail-backend-list",
                    quoted(a),
                    "entries must not be empty",
                ));
            }
        }
        if p.advertise_addr.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "proxy.advertise-addr",
                quoted(&p.advertise_addr),
                "must be a bare host name or IP address",
            ));
        }
        if !(MIN_CONN_BUFFER..=MAX_CONN_BUFFER).contains(&p.conn_buffer_size) {
            return Err(ConfigError::invalid(
                "proxy.conn-buffer-size",
                p.conn_buffer_size,
                format!("must be between {MIN_CONN_BUFFER} and {MAX_CONN_BUFFER} bytes"),
            ));
        }
        if !matches!(p.proxy_protocol.as_str(), "" | "v2") {
            return Err(ConfigError::invalid(
                "proxy.proxy-protocol",
                quoted(&p.proxy_protocol),
                "expected \"\" (off) or \"v2\"",
            ));
        }
        if !matches!(p.io_engine.as_str(), "epoll" | "io-uring" | "tokio") {
            return Err(ConfigError::invalid(
                "proxy.io-engine",
                quoted(&p.io_engine),
                "expected \"epoll\", \"io-uring\" or \"tokio\"",
            ));
        }
        if !matches!(p.backend_proxy_protocol.as_str(), "" | "v2" | "off") {
            return Err(ConfigError::invalid(
                "proxy.backend-proxy-protocol",
                quoted(&p.backend_proxy_protocol),
                "expected \"\" (as proxy-protocol), \"v2\" or \"off\"",
            ));
        }
        if let Err(reason) = super::networks::TrustedNetworks::parse(&p.proxy_protocol_networks) {
            return Err(ConfigError::invalid(
                "proxy.proxy-protocol-networks",
                format!("{:?}", p.proxy_protocol_networks),
                reason.to_string(),
            ));
        }
        for h in &self.api.allowed_hosts {
            if h.trim().is_empty() || h.contains(['/', ' ']) {
                return Err(ConfigError::invalid(
                    "api.allowed-hosts",
                    quoted(h),
                    "expected a host name such as \"tiproxy.example.com\"",
                ));
            }
        }
        check_balance(&self.balance)?;
        positive("proxy.backend-connect-timeout", p.backend_connect_timeout)?;
        positive("proxy.client-handshake-timeout", p.client_handshake_timeout)?;

        if normalize_log_level(&self.log.level).is_none() {
            return Err(ConfigError::invalid(
                "log.level",
                quoted(&self.log.level),
                "expected one of trace, debug, info, warn, error",
            ));
        }
        if !matches!(
            self.log.encoder.to_ascii_lowercase().as_str(),
            "" | "tidb" | "json" | "console"
        ) {
            return Err(ConfigError::invalid(
                "log.encoder",
                quoted(&self.log.encoder),
                "expected one of tidb, json, console",
            ));
        }

        let s = &self.security;
        for (name, tls) in [
            ("server-tls", &s.server_tls),
            ("server-http-tls", &s.server_http_tls),
            ("cluster-tls", &s.cluster_tls),
            ("sql-tls", &s.sql_tls),
        ] {
            check_allowed_cn(name, tls)?;
            if normalize_tls_version(&tls.min_tls_version).is_none() {
                return Err(ConfigError::invalid(
                    &format!("security.{name}.min-tls-version"),
                    quoted(&tls.min_tls_version),
                    "expected \"\" (1.2), \"1.0\", \"1.1\", \"1.2\" or \"1.3\"",
                ));
            }
        }

        let h = &self.health;
        positive("health.interval-ms", h.interval_ms)?;
        positive("health.timeout-ms", h.timeout_ms)?;
        positive("health.failure-threshold", u64::from(h.failure_threshold))?;
        positive("health.recovery-threshold", u64::from(h.recovery_threshold))?;
        Ok(())
    }
}

/// `cert-allowed-cn` narrows who may connect; a setting that cannot be enforced must not
/// start, or the restriction would silently vanish.
fn check_allowed_cn(name: &str, tls: &super::types::TlsConfig) -> Result<(), ConfigError> {
    if tls.cert_allowed_cn.is_empty() {
        return Ok(());
    }
    let key = format!("security.{name}.cert-allowed-cn");
    let value = format!("{:?}", tls.cert_allowed_cn);
    if !name.starts_with("server") {
        return Err(ConfigError::invalid(
            &key,
            value,
            "only the server sides (server-tls, server-http-tls) check client certificates",
        ));
    }
    if !tls.enabled_for_server() || tls.ca.is_empty() {
        return Err(ConfigError::invalid(
            &key,
            value,
            "needs cert/key (or auto-certs) and a ca to verify client certificates with",
        ));
    }
    if tls.cert_allowed_cn.iter().any(|cn| cn.trim().is_empty()) {
        return Err(ConfigError::invalid(&key, value, "a name is empty"));
    }
    Ok(())
}

/// A misspelt policy would otherwise fall back to the default without a word.
fn check_balance(b: &super::types::BalanceConfig) -> Result<(), ConfigError> {
    if !matches!(b.policy.as_str(), "resource" | "location" | "connection") {
        return Err(ConfigError::invalid(
            "balance.policy",
            quoted(&b.policy),
            "expected resource, location or connection",
        ));
    }
    if !matches!(
        b.routing_rule.as_str(),
        "" | "port" | "client_cidr" | "proxy_cidr"
    ) {
        return Err(ConfigError::invalid(
            "balance.routing-rule",
            quoted(&b.routing_rule),
            "expected \"\" (none), port, client_cidr or proxy_cidr",
        ));
    }
    if !matches!(b.routing_policy.as_str(), "" | "prefer-idle" | "random") {
        return Err(ConfigError::invalid(
            "balance.routing-policy",
            quoted(&b.routing_policy),
            "expected \"\" (prefer-idle), prefer-idle or random",
        ));
    }
    for (key, rate) in [
        (
            "balance.status.migrations-per-second",
            b.status.migrations_per_second,
        ),
        (
            "balance.health.migrations-per-second",
            b.health.migrations_per_second,
        ),
        (
            "balance.memory.migrations-per-second",
            b.memory.migrations_per_second,
        ),
        (
            "balance.cpu.migrations-per-second",
            b.cpu.migrations_per_second,
        ),
        (
            "balance.location.migrations-per-second",
            b.location.migrations_per_second,
        ),
        (
            "balance.conn-count.migrations-per-second",
            b.conn_count.migrations_per_second,
        ),
    ] {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(ConfigError::invalid(
                key,
                rate,
                "expected a non-negative number",
            ));
        }
    }
    let threshold = b.conn_count.count_ratio_threshold;
    if threshold != 0.0 && !(threshold.is_finite() && threshold > 1.0) {
        return Err(ConfigError::invalid(
            "balance.conn-count.count-ratio-threshold",
            threshold,
            "expected 0 (keep conn-count-ratio) or a number above 1",
        ));
    }
    if let Err(reason) = super::routes::check_all(&b.routes) {
        return Err(ConfigError::invalid(
            "balance.routes",
            format!("[{} rules]", b.routes.len()),
            reason.to_string(),
        ));
    }
    Ok(())
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, v, "must be at least 1"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum AddrKind {
    /// May omit the host (":6000" binds all interfaces) and may use port 0 (ephemeral).
    Listen,
    /// Something we dial: needs a host and a real port.
    Remote,
}

fn check_addr(key: &str, addr: &str, kind: AddrKind) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::invalid(key, quoted(addr), reason);
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| bad("unterminated '[' in IPv6 address"))?;
        let port = tail
            .strip_prefix(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let bare = h.split('%').next().unwrap_or(h);
        if bare.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not a valid IPv6 address"));
        }
        (h, port)
    } else {
        let (h, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if h.contains(':') {
            return Err(bad("IPv6 addresses must be written as [addr]:port"));
        }
        if !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(bad("host contains invalid characters"));
        }
        (h, port)
    };
    if host.is_empty() && kind == AddrKind::Remote {
        return Err(bad("expected host:port, the host is missing"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
    if port == 0 && kind == AddrKind::Remote {
        return Err(bad("the port must not be 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(f: impl FnOnce(&mut Config)) -> String {
        let mut c = Config::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn addresses() {
        for ok in [
            "0.0.0.0:6000",
            ":6000",
            "127.0.0.1:0",
            "[::1]:6000",
            "[fe80::1%eth0]:1",
        ] {
            check_addr("k", ok, AddrKind::Listen).unwrap();
        }
        for ok in ["tidb-0.tidb:4000", "[::1]:4000", "10.0.0.1:4000"] {
            check_addr("k", ok, AddrKind::Remote).unwrap();
        }
        for bad in [
            "tidb",
            ":4000",
            "h:0",
            "h:65536",
            "h:x",
            "::1:4000",
            "[::1]4000",
            "a b:1",
        ] {
            assert!(check_addr("k", bad, AddrKind::Remote).is_err(), "{bad}");
        }
        let e = err_of(|c| c.proxy.backend_addrs = vec!["127.0.0.1".into()]);
        assert!(
            e.contains("proxy.backend-addrs") && e.contains("\"127.0.0.1\""),
            "{e}"
        );
        let e = err_of(|c| c.set_pd_addrs("http://pd:2379,pd2"));
        assert!(e.contains("proxy.pd-addrs") && e.contains("pd2"), "{e}");
    }

    #[test]
    fn enumerations_and_ranges() {
        let e = err_of(|c| c.log.level = "loud".into());
        assert!(e.contains("log.level") && e.contains("loud"), "{e}");
        let mut c = Config::default();
        c.log.level = "WARNING".into();
        c.log.encoder = "JSON".into();
        c.security.sql_tls.min_tls_version = "TLS1.3".into();
        c.validate().unwrap();
        assert!(err_of(|c| c.log.encoder = "xml".into()).contains("log.encoder"));
        assert!(err_of(|c| c.proxy.proxy_protocol = "v1".into()).contains("proxy.proxy-protocol"));
        assert!(err_of(|c| c.balance.policy = "cpu".into()).contains("balance.policy"));
        assert!(
            err_of(|c| c.balance.routing_policy = "idle".into()).contains("balance.routing-policy")
        );
        assert!(err_of(|c| c.proxy.conn_buffer_size = 10).contains("proxy.conn-buffer-size"));
        assert!(err_of(|c| c.proxy.conn_buffer_size = 32 << 20).contains("conn-buffer-size"));
        assert!(err_of(|c| c.health.failure_threshold = 0).contains("health.failure-threshold"));
        assert!(err_of(|c| c.health.timeout_ms = 0).contains("health.timeout-ms"));
        assert!(err_of(|c| c.proxy.backend_connect_timeout = 0).contains("backend-connect-timeout"));
        let e = err_of(|c| c.security.cluster_tls.min_tls_version = "ssl3".into());
        assert!(
            e.contains("security.cluster-tls.min-tls-version") && e.contains("ssl3"),
            "{e}"
        );
    }

    #[test]
    fn backend_status_addrs_must_be_host_port() {
        let mut c = Config::default();
        c.proxy
            .backend_status_addrs
            .insert("127.0.0.1:4000".into(), "127.0.0.1".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("proxy.backend-status-addrs"), "{e}");
        c.proxy
            .backend_status_addrs
            .insert("127.0.0.1:4000".into(), "127.0.0.1:10080".into());
        assert!(c.validate().is_ok());
    }
}
