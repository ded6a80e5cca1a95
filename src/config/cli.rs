//! The `tiproxy` command line: flags TiUP and old scripts pass, and how they override the file.

use super::types::Config;
use clap::{ArgAction, Parser};
use std::ffi::OsString;
use std::path::PathBuf;

/// Command-line flags. `-v/--version` is only recorded: main prints the
/// TiProxy-style version line, so clap's own version flag is disabled.
#[derive(Debug, Clone, Default, PartialEq, Parser)]
#[command(
    name = "tiproxy",
    about = "A MySQL-protocol proxy for TiDB, MySQL and MariaDB",
    disable_version_flag = true
)]
pub struct Cli {
    /// Configuration file (TOML)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Host other components use to reach this proxy
    #[arg(long, value_name = "HOST")]
    pub advertise_addr: Option<String>,
    /// Static backends, comma separated host:port list
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    pub backend_addrs: Option<Vec<String>>,
    /// PD endpoints, comma separated host:port list
    #[arg(long, value_name = "ADDRS")]
    pub pd_addrs: Option<String>,
    /// SQL listen address host:port
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::SetTrue)]
    pub version: bool,
    /// Print every config key with type, default and hot-reloadability (format: json)
    #[arg(long, value_name = "FORMAT")]
    pub config_info: Option<String>,
    /// Deprecated and ignored (use log.encoder in the config file)
    #[arg(long = "log_encoder", hide = true, value_name = "ENCODER")]
    pub deprecated_log_encoder: Option<String>,
    /// Deprecated and ignored (use log.level in the config file)
    #[arg(long = "log_level", hide = true, value_name = "LEVEL")]
    pub deprecated_log_level: Option<String>,
}

/// Long flags that Go's flag package also accepted with a single dash (`-config f`).
const LONG_FLAGS: &[&str] = &[
    "config",
    "advertise-addr",
    "backend-addrs",
    "pd-addrs",
    "addr",
    "version",
    "config-info",
    "log_encoder",
    "log_level",
];

/// Parse the process arguments (the first item is the program name, as in
/// `std::env::args_os()`). Single-dash long flags are accepted for Go compatibility.
pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = args.into_iter().map(Into::into).enumerate().map(|(i, a)| {
        if i == 0 {
            return a;
        }
        match a.to_str() {
            Some(s) if !s.starts_with("--") && s.starts_with('-') => {
                let name = s[1..].split('=').next().unwrap_or("");
                if LONG_FLAGS.contains(&name) {
                    OsString::from(format!("-{s}"))
                } else {
                    a
                }
            }
            _ => a,
        }
    });
    Cli::try_parse_from(args)
}

impl Cli {
    /// Flags win over the file. `--pd-addrs` counts as an explicit choice, so PD is
    /// contacted even when static backends are configured too.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(a) = &self.addr {
            cfg.proxy.addr = a.clone();
        }
        if let Some(a) = &self.advertise_addr {
            cfg.proxy.advertise_addr = a.clone();
        }
        if let Some(list) = &self.backend_addrs {
            cfg.proxy.backend_addrs = list
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(pd) = &self.pd_addrs {
            cfg.set_pd_addrs(pd.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        parse_args(std::iter::once("tiproxy").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn config_both_forms() {
        assert_eq!(parse(&["--config", "a.toml"]).config, Some("a.toml".into()));
        assert_eq!(parse(&["--config=b.toml"]).config, Some("b.toml".into()));
        assert_eq!(parse(&["-config", "c.toml"]).config, Some("c.toml".into()));
        assert_eq!(parse(&["-config=d.toml"]).config, Some("d.toml".into()));
    }

    #[test]
    fn version_and_info() {
        assert!(parse(&["-v"]).version);
        assert!(parse(&["--version"]).version);
        assert!(!parse(&[]).version);
        assert_eq!(
            parse(&["--config-info", "json"]).config_info.as_deref(),
            Some("json")
        );
    }

    #[test]
    fn deprecated_flags_are_accepted() {
        let c = parse(&["--log_encoder", "tidb", "--log_level=debug", "--config=x"]);
        assert_eq!(c.config, Some("x".into()));
        assert_eq!(c.deprecated_log_level.as_deref(), Some("debug"));
        let mut cfg = Config::default();
        c.apply(&mut cfg);
        assert_eq!(
            cfg.log.level, "info",
            "deprecated flags do not change the config"
        );
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(parse_args(["tiproxy", "--bogus"]).is_err());
    }

    #[test]
    fn apply_overrides() {
        let c = parse(&[
            "--addr",
            "127.0.0.1:7000",
            "--advertise-addr=::1",
            "--backend-addrs",
            "a:1, b:2",
        ]);
        let mut cfg = Config::default();
        c.apply(&mut cfg);
        assert_eq!(cfg.proxy.addr, "127.0.0.1:7000");
        assert_eq!(cfg.proxy.advertise_addr, "::1");
        assert_eq!(cfg.proxy.backend_addrs, vec!["a:1", "b:2"]);
        assert!(
            cfg.pd_addr_list().is_empty(),
            "PD not contacted with static backends"
        );
        parse(&["--pd-addrs", "pd:2379"]).apply(&mut cfg);
        assert_eq!(cfg.pd_addr_list(), vec!["pd:2379"]);
        cfg.validate().unwrap();
    }
}
