//! `[[balance.routes]]` (which listening ports and client networks may use which backends)
//! and the `[proxy] addr` list of SQL ports those rules name.

use super::networks::{Network, NetworkError};
use serde::{Deserialize, Deserializer, Serialize};

/// One routing rule as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in logs and errors only.
    pub name: String,
    /// Proxy SQL ports (from `[proxy] addr`) this rule applies to; empty: any port.
    pub ports: Vec<u16>,
    /// Client networks (`"10.0.0.0/8"`, `"127.0.0.2"`) this rule applies to; empty: any client.
    pub client_cidrs: Vec<String>,
    /// The backends (`host:port` as in backend-addrs or as PD lists them) sessions matching
    /// this rule may use; no others, even when all of these are down.
    pub backends: Vec<String>,
}

/// What is wrong with a routing rule; `rule` names it as the user wrote it (or by position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{rule} names no backends")]
    NoBackends { rule: String },
    #[error("{rule}: {source}")]
    BadClientNetwork {
        rule: String,
        #[source]
        source: NetworkError,
    },
}

/// Checks every rule. `balance::routes` turns checked rules into the policy's form (config
/// knows nothing of the policy).
pub fn check_all(list: &[RouteConfig]) -> Result<(), RouteError> {
    for (i, r) in list.iter().enumerate() {
        let rule = || {
            if r.name.is_empty() {
                format!("rule {}", i + 1)
            } else {
                format!("rule {:?}", r.name)
            }
        };
        if r.backends.iter().all(|b| b.trim().is_empty()) {
            return Err(RouteError::NoBackends { rule: rule() });
        }
        for c in &r.client_cidrs {
            Network::parse(c).map_err(|source| RouteError::BadClientNetwork {
                rule: rule(),
                source,
            })?;
        }
    }
    Ok(())
}

/// The SQL listen addresses in `[proxy] addr`: one, or several separated by commas.
pub fn listen_addrs(addr: &str) -> Vec<String> {
    addr.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// `addr = "a:6000"`, `addr = "a:6000,a:6001"` or `addr = ["a:6000", "a:6001"]`: kept as
/// one comma-separated string, the form TiProxy's key and `--addr` take.
pub fn addr_string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::One(s) => s,
        Form::Many(v) => v.join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked_and_name_their_faults() {
        let ok = RouteConfig {
            name: "replicas".into(),
            ports: vec![6001],
            client_cidrs: vec!["10.0.0.0/8".into()],
            backends: vec!["r1:3306".into()],
        };
        check_all(std::slice::from_ref(&ok)).unwrap();
        let no_backends = RouteConfig {
            backends: vec![],
            ..ok.clone()
        };
        assert!(check_all(&[no_backends])
            .unwrap_err()
            .to_string()
            .contains("replicas"));
        let bad_cidr = RouteConfig {
            name: String::new(),
            client_cidrs: vec!["10.0.0.0/40".into()],
            ..ok
        };
        assert!(check_all(&[bad_cidr])
            .unwrap_err()
            .to_string()
            .starts_with("rule 1"));
    }

    #[test]
    fn addr_lists() {
        assert_eq!(
            listen_addrs(" 0.0.0.0:6000, 0.0.0.0:6001 ,"),
            vec!["0.0.0.0:6000", "0.0.0.0:6001"]
        );
        #[derive(Deserialize)]
        struct P {
            #[serde(deserialize_with = "addr_string_or_list")]
            addr: String,
        }
        let p: P = toml::from_str(r#"addr = ["a:1", "b:2"]"#).unwrap();
        assert_eq!(p.addr, "a:1,b:2");
        let p: P = toml::from_str(r#"addr = "a:1""#).unwrap();
        assert_eq!(p.addr, "a:1");
    }
}
