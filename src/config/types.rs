//! The configuration data model: every section, its defaults, and small accessors.

use super::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole proxy configuration, as read from `proxy.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    pub proxy: ProxyConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
    pub security: SecurityConfig,
    pub balance: BalanceConfig,
    pub health: HealthConfig,
    /// Free-form labels (e.g. `zone`) used by location-aware balancing.
    pub labels: BTreeMap<String, String>,
    pub workdir: String,
    /// `[[namespace]]`: users routed to their own backend group (written by the namespace API).
    pub namespace: Vec<super::namespace::NamespaceConfig>,
    /// TiProxy's switch for traffic capture and replay: `false` refuses every `/api/traffic`
    /// path (and so `tiproxyctl traffic`), as TiProxy does.
    pub enable_traffic_replay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proxy: ProxyConfig::default(),
            api: ApiConfig::default(),
            log: LogConfig::default(),
            security: SecurityConfig::default(),
            balance: BalanceConfig::default(),
            health: HealthConfig::default(),
            labels: BTreeMap::new(),
            workdir: String::new(),
            namespace: Vec::new(),
            enable_traffic_replay: true,
        }
    }
}

impl Config {
    /// PD endpoints to contact. Empty when static `backend-addrs` are configured and
    /// `pd-addrs` was never written explicitly, so a PD-less deployment never dials
    /// the default `127.0.0.1:2379`. Old TiUP wrote `http://` prefixes; they are stripped.
    pub fn pd_addr_list(&self) -> Vec<String> {
        if !self.proxy.backend_addrs.is_empty() && !self.proxy.pd_addrs_explicit {
            return Vec::new();
        }
        split_pd_addrs(&self.proxy.pd_addrs)
    }

    /// The backends to probe and route to when no PD lists them: `backend-addrs` and, without
    /// PD, every namespace's instances (with PD those pick among the TiDBs PD lists).
    pub fn static_backend_addrs(&self) -> Vec<String> {
        let mut out = self.proxy.backend_addrs.clone();
        if self.pd_addr_list().is_empty() {
            for ns in &self.namespace {
                for i in ns.instances() {
                    if !out.iter().any(|a| a.trim() == i) {
                        out.push(i.to_string());
                    }
                }
            }
        }
        out
    }

    /// Mark `pd-addrs` as explicitly set (file, flag or API) and store it.
    pub fn set_pd_addrs(&mut self, v: impl Into<String>) {
        self.proxy.set_pd_addrs(v);
    }
}

/// Split a comma list of PD endpoints, dropping blanks, schemes and trailing slashes.
pub(crate) fn split_pd_addrs(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .map(|a| {
            a.strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"))
                .unwrap_or(a)
                .trim_end_matches('/')
        })
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// `[proxy]`: the SQL listener, backends and connection lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ProxyConfig {
    /// One SQL listen address, or several (comma-separated or a list) for port routing rules.
    #[serde(deserialize_with = "super::routes::addr_string_or_list")]
    pub addr: String,
    pub pd_addrs: String,
    pub backend_addrs: Vec<String>,
    /// TiDB status addresses of static backends (`"sql host:port" = "status host:port"`), so
    /// their `GET /status` is probed without PD and a graceful shutdown drains them.
    pub backend_status_addrs: std::collections::BTreeMap<String, String>,
    pub advertise_addr: String,
    pub max_connections: u64,
    pub conn_buffer_size: usize,
    pub proxy_protocol: String,
    /// Sources allowed to send a PROXY protocol header (CIDR or IP; "*" = any). Empty: loopback
    /// only, so nobody who reaches the port directly can pose as another address.
    pub proxy_protocol_networks: Vec<String>,
    /// PROXY header towards the backends: "" follows `proxy-protocol` (as TiProxy does),
    /// "v2" always, "off" never (backends that do not accept one, e.g. MariaDB without
    /// `proxy_protocol_networks`).
    pub backend_proxy_protocol: String,
    /// Connections from one IP address that may be in the handshake (not yet logged in) at
    /// once; 0 = no limit. Bounds what one host's silent connects cost everyone else.
    pub max_handshakes_per_source: u64,
    pub graceful_wait_before_shutdown: u64,
    pub graceful_close_conn_timeout: u64,
    pub fail_backend_list: Vec<String>,
    pub failover_timeout: u64,
    pub backend_connect_timeout: u64,
    pub client_handshake_timeout: u64,
    /// Seconds a client may fall silent in the middle of sending a command; 0 = no limit.
    pub client_read_timeout: u64,
    /// How the workers carry sessions: "epoll" (their own loop), "tokio" or "io-uring" (falls
    /// back to epoll, with one log line, where the kernel refuses io_uring).
    pub io_engine: String,
    /// `[proxy.service-account]`: lets the proxy read password hashes so it can move MySQL
    /// and MariaDB sessions; empty = such sessions are not moved.
    pub service_account: ServiceAccount,
    /// Whether `pd-addrs` was written by the user rather than defaulted. It decides
    /// whether PD is contacted when `backend-addrs` is set, and is not part of the file.
    #[serde(skip)]
    pub pd_addrs_explicit: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            addr: "0.0.0.0:6000".into(),
            pd_addrs: "127.0.0.1:2379".into(),
            backend_addrs: Vec::new(),
            backend_status_addrs: Default::default(),
            advertise_addr: String::new(),
            max_connections: 0,
            conn_buffer_size: 32 * 1024,
            proxy_protocol: String::new(),
            proxy_protocol_networks: Vec::new(),
            backend_proxy_protocol: String::new(),
            max_handshakes_per_source: 100,
            graceful_wait_before_shutdown: 0,
            graceful_close_conn_timeout: 15,
            fail_backend_list: Vec::new(),
            failover_timeout: 60,
            backend_connect_timeout: 5,
            client_handshake_timeout: 10,
            client_read_timeout: 30,
            io_engine: "epoll".into(),
            service_account: ServiceAccount::default(),
            pd_addrs_explicit: false,
        }
    }
}

/// A MySQL/MariaDB account allowed to `SELECT` from `mysql.user`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServiceAccount {
    pub user: String,
    pub password: Secret,
}

impl ProxyConfig {
    /// Whether backend connections start with a PROXY v2 header naming the client.
    pub fn sends_proxy_header(&self) -> bool {
        match self.backend_proxy_protocol.as_str() {
            "v2" => true,
            "off" => false,
            _ => self.proxy_protocol == "v2",
        }
    }

    /// Store `pd-addrs` and remember that the user asked for it.
    pub fn set_pd_addrs(&mut self, v: impl Into<String>) {
        self.pd_addrs = v.into();
        self.pd_addrs_explicit = true;
    }
}

/// `[api]`: the HTTP status/admin listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ApiConfig {
    pub addr: String,
    pub user: String,
    pub password: Secret,
    /// Host names (the HTTP `Host` header, without port) accepted on requests that change
    /// state, besides IP addresses, `localhost` and this machine's names: DNS rebinding
    /// arrives under a name of the attacker's.
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: "0.0.0.0:3080".into(),
            user: String::new(),
            password: Secret::default(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[log]`: level, line format and destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct LogConfig {
    pub level: String,
    pub encoder: String,
    pub log_file: LogFileConfig,
    pub query_error_file: QueryErrorFileConfig,
}

/// `[log.query-error-file]`: where errors that backends return to queries are logged. Empty
/// means the main log, at WARN and rate-limited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct QueryErrorFileConfig {
    pub filename: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            encoder: "tidb".into(),
            log_file: LogFileConfig::default(),
            query_error_file: QueryErrorFileConfig::default(),
        }
    }
}

/// `[log.log-file]`: file output and size-based rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct LogFileConfig {
    pub filename: String,
    /// Megabytes before the file is rotated.
    pub max_size: u64,
    pub max_days: u64,
    pub max_backups: u64,
}

impl Default for LogFileConfig {
    fn default() -> Self {
        LogFileConfig {
            filename: String::new(),
            max_size: 300,
            max_days: 3,
            max_backups: 3,
        }
    }
}

/// `[security]`: TLS for each listener/peer, plus the backend TLS requirement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct SecurityConfig {
    /// Client-facing SQL listener.
    pub server_tls: TlsConfig,
    /// HTTP status/admin listener.
    pub server_http_tls: TlsConfig,
    /// PD/etcd and TiDB status ports.
    pub cluster_tls: TlsConfig,
    /// Proxy-to-backend SQL connections.
    pub sql_tls: TlsConfig,
    /// The key file of `aes256-ctr` traffic captures (its first 32 bytes), as TiProxy's.
    pub encryption_key_path: String,
    pub require_backend_tls: bool,
}

/// One TLS endpoint description, shared by servers and clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct TlsConfig {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub skip_ca: bool,
    pub auto_certs: bool,
    pub min_tls_version: String,
    /// Common names a client certificate must carry (server sides only); empty = any name the
    /// CA signed. Set, it makes a client certificate mandatory even with skip-ca.
    pub cert_allowed_cn: Vec<String>,
}

impl TlsConfig {
    /// A certificate is usable only with its key.
    pub fn has_cert(&self) -> bool {
        !self.cert.is_empty() && !self.key.is_empty()
    }

    /// A server can offer TLS with a configured or a self-generated certificate.
    pub fn enabled_for_server(&self) -> bool {
        self.has_cert() || self.auto_certs
    }

    /// A client speaks TLS when it can verify (ca), chose not to (skip-ca), or must present a cert.
    pub fn enabled_for_client(&self) -> bool {
        !self.ca.is_empty() || self.skip_ca || self.has_cert()
    }

    /// The minimum TLS version as "1.0".."1.3" ("" means 1.2); None if unrecognised.
    pub fn min_version(&self) -> Option<&'static str> {
        normalize_tls_version(&self.min_tls_version)
    }
}

/// Accept "1.2", "TLS1.2", "tlsv1.2" and friends; "" is the 1.2 default.
pub fn normalize_tls_version(v: &str) -> Option<&'static str> {
    let lower = v.trim().to_ascii_lowercase();
    let bare = lower
        .strip_prefix("tlsv")
        .or_else(|| lower.strip_prefix("tls"))
        .unwrap_or(&lower);
    match bare {
        "" => Some("1.2"),
        "1.0" | "10" => Some("1.0"),
        "1.1" | "11" => Some("1.1"),
        "1.2" | "12" => Some("1.2"),
        "1.3" | "13" => Some("1.3"),
        _ => None,
    }
}

/// Map Go/zap-style level names onto tracing's five levels, case-insensitively.
pub fn normalize_log_level(v: &str) -> Option<&'static str> {
    match v.trim().to_ascii_lowercase().as_str() {
        "trace" => Some("trace"),
        "debug" => Some("debug"),
        "info" | "" => Some("info"),
        "warn" | "warning" => Some("warn"),
        "error" | "dpanic" | "panic" | "fatal" => Some("error"),
        _ => None,
    }
}

/// `[balance]`: how backends are chosen and sessions rebalanced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BalanceConfig {
    pub policy: String,
    pub label_name: String,
    pub routing_policy: String,
    /// TiProxy's `routing-rule`: "" (none), "port" or "client_cidr" group backends by their
    /// `tiproxy-port` / `cidr` labels; "proxy_cidr" is accepted and has no effect here.
    pub routing_rule: String,
    /// Sessions move off the busiest healthy backend when it has more than this many times
    /// the sessions of the least busy one (and at least two more).
    pub conn_count_ratio: f64,
    /// At most this many sessions are moved per second for balance (drains are not limited).
    pub max_migrations_per_second: u32,
    /// `[[balance.routes]]`: ports and client networks confined to their own backends.
    pub routes: Vec<super::routes::RouteConfig>,
    /// TiProxy's per-factor tables: `migrations-per-second` (0 keeps the built-in rate).
    pub status: FactorConfig,
    pub health: FactorConfig,
    pub memory: FactorConfig,
    pub cpu: FactorConfig,
    pub location: FactorConfig,
    pub conn_count: ConnCountConfig,
}

/// `[balance.<factor>]` as TiProxy names it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct FactorConfig {
    /// Sessions moved per second for this factor; fractions allowed; 0 is the built-in rate.
    pub migrations_per_second: f64,
}

/// `[balance.conn-count]`: TiProxy's rate and threshold for connection-count moves.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ConnCountConfig {
    pub migrations_per_second: f64,
    /// Above 1: replaces `conn-count-ratio`; 0 keeps it.
    pub count_ratio_threshold: f64,
}

impl BalanceConfig {
    /// The session-count ratio that moves sessions: TiProxy's key when set, else ours.
    pub fn effective_count_ratio(&self) -> f64 {
        if self.conn_count.count_ratio_threshold > 1.0 {
            self.conn_count.count_ratio_threshold
        } else {
            self.conn_count_ratio
        }
    }
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            policy: "resource".into(),
            label_name: String::new(),
            routing_policy: String::new(),
            routing_rule: String::new(),
            conn_count_ratio: 1.5,
            max_migrations_per_second: 10,
            routes: Vec::new(),
            status: FactorConfig::default(),
            health: FactorConfig::default(),
            memory: FactorConfig::default(),
            cpu: FactorConfig::default(),
            location: FactorConfig::default(),
            conn_count: ConnCountConfig::default(),
        }
    }
}

/// `[health]`: backend health checking (ours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct HealthConfig {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures before a backend is marked unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes before an unhealthy backend is used again.
    pub recovery_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 3000,
            timeout_ms: 2000,
            failure_threshold: 3,
            recovery_threshold: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_compat() {
        let c = Config::default();
        assert_eq!(c.proxy.addr, "0.0.0.0:6000");
        assert_eq!(c.proxy.pd_addrs, "127.0.0.1:2379");
        assert_eq!(c.proxy.conn_buffer_size, 32768);
        assert_eq!(c.proxy.graceful_close_conn_timeout, 15);
        assert_eq!(c.proxy.failover_timeout, 60);
        assert_eq!(c.api.addr, "0.0.0.0:3080");
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.encoder, "tidb");
        assert_eq!(c.log.log_file.max_size, 300);
        assert!(!c.security.require_backend_tls);
        assert_eq!(c.balance.policy, "resource");
        assert_eq!(c.health.failure_threshold, 3);
    }

    #[test]
    fn pd_list_skipped_with_static_backends_unless_explicit() {
        let mut c = Config::default();
        assert_eq!(c.pd_addr_list(), vec!["127.0.0.1:2379"]);
        c.proxy.backend_addrs = vec!["127.0.0.1:4000".into()];
        assert!(c.pd_addr_list().is_empty());
        c.set_pd_addrs("http://pd1:2379, https://pd2:2379/ ,,");
        assert_eq!(c.pd_addr_list(), vec!["pd1:2379", "pd2:2379"]);
    }

    #[test]
    fn tls_flags() {
        let mut t = TlsConfig::default();
        assert!(!t.enabled_for_server() && !t.enabled_for_client());
        t.cert = "c.pem".into();
        assert!(!t.has_cert(), "a cert without a key is unusable");
        t.key = "k.pem".into();
        assert!(t.has_cert() && t.enabled_for_server() && t.enabled_for_client());
        let t = TlsConfig {
            auto_certs: true,
            ..Default::default()
        };
        assert!(t.enabled_for_server() && !t.enabled_for_client());
        let t = TlsConfig {
            skip_ca: true,
            ..Default::default()
        };
        assert!(t.enabled_for_client());
    }

    #[test]
    fn version_and_level_spellings() {
        assert_eq!(normalize_tls_version(""), Some("1.2"));
        assert_eq!(normalize_tls_version("TLS1.3"), Some("1.3"));
        assert_eq!(normalize_tls_version("tlsv1.0"), Some("1.0"));
        assert_eq!(normalize_tls_version("1.4"), None);
        assert_eq!(normalize_log_level("WARNING"), Some("warn"));
        assert_eq!(normalize_log_level("fatal"), Some("error"));
        assert_eq!(normalize_log_level("verbose"), None);
    }
}
