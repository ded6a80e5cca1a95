//! Configuration errors, each naming the file, line or key the user has to fix.

use super::namespace::NamespaceConfigError;
use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded or applied.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config syntax error at line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// A misspelt key under `[security]` or `[api]` would silently leave TLS or auth off.
    #[error("unknown config key `{key}` at line {line}: keys under [security] and [api] must be spelt exactly, as a typo there would leave TLS or authentication off")]
    UnknownSecurityKey { key: String, line: usize },
    #[error("invalid value for `{key}` = {value}: {reason}{}", LineSuffix(*line))]
    Invalid {
        key: String,
        value: String,
        reason: String,
        line: Option<usize>,
    },
    /// A `[[namespace]]` entry is wrong, or claims what another one has.
    #[error("invalid value for `namespace` = [{count} namespaces]: {source}{}", LineSuffix(*line))]
    Namespace {
        count: usize,
        #[source]
        source: NamespaceConfigError,
        line: Option<usize>,
    },
}

impl ConfigError {
    /// An Invalid error without a line; the loader fills the line in when it knows it.
    pub(crate) fn invalid(key: &str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
            line: None,
        }
    }
}

struct LineSuffix(Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, " (line {l})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_key_value_and_line() {
        let e = ConfigError::Invalid {
            key: "proxy.max-connections".into(),
            value: "\"abc\"".into(),
            reason: "expected a non-negative integer".into(),
            line: Some(7),
        };
        assert_eq!(
            e.to_string(),
            "invalid value for `proxy.max-connections` = \"abc\": expected a non-negative integer (line 7)"
        );
        let e = ConfigError::invalid("log.level", "\"loud\"", "unknown level");
        assert_eq!(
            e.to_string(),
            "invalid value for `log.level` = \"loud\": unknown level"
        );
        let e = ConfigError::Io {
            path: "/nope/proxy.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(e.to_string().contains("/nope/proxy.toml"));
    }

    #[test]
    fn a_namespace_fault_keeps_its_cause() {
        let e = ConfigError::Namespace {
            count: 2,
            source: NamespaceConfigError::Duplicate { name: "a".into() },
            line: Some(4),
        };
        assert_eq!(
            e.to_string(),
            "invalid value for `namespace` = [2 namespaces]: namespace \"a\" is defined twice (line 4)"
        );
        let cause = std::error::Error::source(&e).expect("a source");
        assert_eq!(cause.to_string(), "namespace \"a\" is defined twice");
    }
}
