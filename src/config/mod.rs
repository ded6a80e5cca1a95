//! Configuration: the TOML model, loading with warnings, validation, CLI flags and key metadata.

mod checksum;
pub mod cli;
mod error;
mod info;
mod load;
pub mod namespace;
pub mod networks;
pub mod routes;
pub mod secret;
mod tiproxy_keys;
mod types;
mod validate;
pub mod watch;

pub use cli::{parse_args, Cli};
pub use error::ConfigError;
pub use info::{config_info_json, is_hot_reloadable};
pub use load::{load_file, merge_partial, parse_str, Loaded};
pub use secret::Secret;
pub use types::{
    normalize_log_level, normalize_tls_version, ApiConfig, BalanceConfig, Config, HealthConfig,
    LogConfig, LogFileConfig, ProxyConfig, QueryErrorFileConfig, SecurityConfig, ServiceAccount,
    TlsConfig,
};
