//! TEMPORARY stub of the config types (replaced by the real module on merge).
#![allow(missing_docs)]
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
    pub security: SecurityConfig,
    pub balance: BalanceConfig,
    pub health: HealthConfig,
    pub labels: BTreeMap<String, String>,
    pub workdir: String,
}
impl Default for Config {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig {
                addr: "0.0.0.0:6000".into(),
                pd_addrs: "127.0.0.1:2379".into(),
                backend_addrs: vec![],
                advertise_addr: String::new(),
                max_connections: 0,
                conn_buffer_size: 32768,
                proxy_protocol: String::new(),
                graceful_wait_before_shutdown: 0,
                graceful_close_conn_timeout: 15,
                fail_backend_list: vec![],
                failover_timeout: 60,
                backend_connect_timeout: 5,
                client_handshake_timeout: 10,
            },
            api: ApiConfig { addr: "0.0.0.0:3080".into(), user: String::new(), password: String::new() },
            log: LogConfig { level: "info".into(), encoder: "tidb".into(), log_file: LogFileConfig { filename: String::new(), max_size: 300, max_days: 3, max_backups: 3 } },
            security: SecurityConfig::default(),
            balance: BalanceConfig::default(),
            health: HealthConfig { interval_ms: 3000, timeout_ms: 2000, failure_threshold: 3, recovery_threshold: 1 },
            labels: BTreeMap::new(),
            workdir: String::new(),
        }
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub addr: String,
    pub pd_addrs: String,
    pub backend_addrs: Vec<String>,
    pub advertise_addr: String,
    pub max_connections: u64,
    pub conn_buffer_size: usize,
    pub proxy_protocol: String,
    pub graceful_wait_before_shutdown: u64,
    pub graceful_close_conn_timeout: u64,
    pub fail_backend_list: Vec<String>,
    pub failover_timeout: u64,
    pub backend_connect_timeout: u64,
    pub client_handshake_timeout: u64,
}
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig { pub addr: String, pub user: String, pub password: String }
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig { pub level: String, pub encoder: String, pub log_file: LogFileConfig }
#[derive(Debug, Clone, PartialEq)]
pub struct LogFileConfig { pub filename: String, pub max_size: u64, pub max_days: u64, pub max_backups: u64 }
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecurityConfig { pub server_tls: TlsConfig, pub server_http_tls: TlsConfig, pub cluster_tls: TlsConfig, pub sql_tls: TlsConfig, pub require_backend_tls: bool }
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig { pub ca: String, pub cert: String, pub key: String, pub skip_ca: bool, pub auto_certs: bool, pub min_tls_version: String }
impl TlsConfig {
    pub fn has_cert(&self) -> bool { !self.cert.is_empty() && !self.key.is_empty() }
    pub fn enabled_for_server(&self) -> bool { self.has_cert() || self.auto_certs }
    pub fn enabled_for_client(&self) -> bool { !self.ca.is_empty() || self.skip_ca || self.has_cert() }
}
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BalanceConfig { pub policy: String, pub label_name: String, pub routing_policy: String }
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig { pub interval_ms: u64, pub timeout_ms: u64, pub failure_threshold: u32, pub recovery_threshold: u32 }
