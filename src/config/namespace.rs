//! `[[namespace]]`: TiProxy's namespaces, each a set of frontend users and the backend group
//! they are routed to (static addresses and/or a label selector). Written by the status port's
//! namespace API into the config file, so they survive a restart. `balance::routes_namespace`
//! turns checked namespaces into routing groups.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One namespace, in TiProxy's shape (`namespace`, `frontend.user`, `backend.instances`) with
/// our additions (`frontend.users`, `backend.labels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NamespaceConfig {
    pub namespace: String,
    pub frontend: NamespaceFrontend,
    pub backend: NamespaceBackend,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NamespaceFrontend {
    /// TiProxy's single user.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// More users (ours): a namespace may gather several accounts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(skip_serializing_if = "NamespaceTls::is_unset")]
    pub security: NamespaceTls,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NamespaceBackend {
    /// Backend addresses (`host:port`). Without PD they join the backend list; with PD they
    /// pick among the TiDBs PD lists.
    pub instances: Vec<String>,
    /// Label selector (ours): every backend carrying all these labels belongs here.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "NamespaceTls::is_unset")]
    pub security: NamespaceTls,
}

/// TiProxy's per-namespace TLS block. TiProxy itself does not apply it; here it must be empty,
/// because accepting certificates and then not using them would look like protection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct NamespaceTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub auto_certs: bool,
    pub skip_ca: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_allowed_cn: Option<Vec<String>>,
    pub min_tls_version: String,
    pub rsa_key_size: i64,
    pub autocert_expire_duration: String,
}

impl NamespaceTls {
    pub fn is_unset(&self) -> bool {
        let cn_unset = self.cert_allowed_cn.as_ref().is_none_or(Vec::is_empty);
        self.ca.is_empty()
            && self.cert.is_empty()
            && self.key.is_empty()
            && !self.auto_certs
            && !self.skip_ca
            && cn_unset
            && self.min_tls_version.is_empty()
    }
}

impl NamespaceConfig {
    /// Every frontend user, TiProxy's `user` first; blanks dropped.
    pub fn all_users(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.frontend.user.as_str())
            .chain(self.frontend.users.iter().map(String::as_str))
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    pub fn instances(&self) -> impl Iterator<Item = &str> {
        self.backend
            .instances
            .iter()
            .map(|i| i.trim())
            .filter(|i| !i.is_empty())
    }

    /// What is wrong with this namespace on its own.
    pub fn check(&self) -> Result<(), NamespaceConfigError> {
        let name = self.namespace.trim();
        if name.is_empty() {
            return Err(NamespaceConfigError::NoName);
        }
        let named = || name.to_owned();
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(NamespaceConfigError::BadName { name: named() });
        }
        if self.instances().next().is_none() && self.backend.labels.is_empty() {
            return Err(NamespaceConfigError::NoBackends { name: named() });
        }
        for i in self.instances() {
            if !i
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            {
                return Err(NamespaceConfigError::BadInstance {
                    name: named(),
                    instance: i.to_owned(),
                });
            }
        }
        let tls_key = match (
            self.frontend.security.is_unset(),
            self.backend.security.is_unset(),
        ) {
            (false, _) => Some("frontend.security"),
            (_, false) => Some("backend.security"),
            _ => None,
        };
        if let Some(key) = tls_key {
            return Err(NamespaceConfigError::Tls { name: named(), key });
        }
        Ok(())
    }
}

/// What is wrong with the `[[namespace]]` list: each names the namespace and the key to fix
/// (or the two namespaces that claim the same name, user or backend).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceConfigError {
    #[error("a namespace needs a name (\"namespace\")")]
    NoName,
    #[error("namespace {name:?}: a name is 1-64 letters, digits, '-', '_' or '.'")]
    BadName { name: String },
    #[error("namespace {name:?} names no backends: set backend.instances or backend.labels")]
    NoBackends { name: String },
    #[error("namespace {name:?}: backend instance {instance:?} is not host:port")]
    BadInstance { name: String, instance: String },
    #[error(
        "namespace {name:?}: per-namespace TLS ({key}) is not supported; [security] applies to every namespace"
    )]
    Tls { name: String, key: &'static str },
    #[error("namespace {name:?} is defined twice")]
    Duplicate { name: String },
    #[error("user {user:?} is in namespaces {first:?} and {name:?}; a user belongs to one")]
    SharedUser {
        user: String,
        first: String,
        name: String,
    },
    #[error(
        "backend {instance:?} is in namespaces {first:?} and {name:?}; a backend belongs to one"
    )]
    SharedBackend {
        instance: String,
        first: String,
        name: String,
    },
}

/// Checks every namespace and that no name, user or instance is claimed twice.
pub fn check_all(list: &[NamespaceConfig]) -> Result<(), NamespaceConfigError> {
    let mut names = BTreeSet::new();
    let mut users: BTreeMap<&str, &str> = BTreeMap::new();
    let mut instances: BTreeMap<&str, &str> = BTreeMap::new();
    for ns in list {
        ns.check()?;
        let name = ns.namespace.trim();
        if !names.insert(name) {
            return Err(NamespaceConfigError::Duplicate { name: name.into() });
        }
        for u in ns.all_users() {
            if let Some(other) = users.insert(u, name) {
                return Err(NamespaceConfigError::SharedUser {
                    user: u.into(),
                    first: other.into(),
                    name: name.into(),
                });
            }
        }
        for i in ns.instances() {
            if let Some(other) = instances.insert(i, name) {
                return Err(NamespaceConfigError::SharedBackend {
                    instance: i.into(),
                    first: other.into(),
                    name: name.into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, user: &str, inst: &[&str]) -> NamespaceConfig {
        NamespaceConfig {
            namespace: name.into(),
            frontend: NamespaceFrontend {
                user: user.into(),
                ..Default::default()
            },
            backend: NamespaceBackend {
                instances: inst.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn tiproxy_json_with_empty_security_is_accepted() {
        let body = r#"{"namespace":"a","frontend":{"user":"u","security":{"ca":"","cert":"","key":"","skip-ca":false}},
            "backend":{"instances":["127.0.0.1:4000"],"security":{"cert-allowed-cn":null}}}"#;
        let n: NamespaceConfig = serde_json::from_str(body).unwrap();
        check_all(std::slice::from_ref(&n)).unwrap();
        let text = toml::to_string(&n).unwrap();
        assert!(!text.contains("security"), "{text}");
        let back: NamespaceConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn faults_name_the_namespace_and_the_key() {
        let mut tls = ns("a", "u", &["h:1"]);
        tls.backend.security.ca = "/ca.pem".into();
        let e = check_all(&[tls]).unwrap_err();
        assert_eq!(
            e,
            NamespaceConfigError::Tls {
                name: "a".into(),
                key: "backend.security"
            }
        );
        assert!(e.to_string().contains("TLS (backend.security)"), "{e}");
        assert_eq!(
            check_all(&[ns("a", "u", &[])]).unwrap_err().to_string(),
            "namespace \"a\" names no backends: set backend.instances or backend.labels"
        );
        assert_eq!(
            check_all(&[ns("a", "u", &["nohost"])]).unwrap_err(),
            NamespaceConfigError::BadInstance {
                name: "a".into(),
                instance: "nohost".into()
            }
        );
        assert_eq!(
            check_all(&[ns("a", "u", &["h:1"]), ns("b", "u", &["h:2"])])
                .unwrap_err()
                .to_string(),
            "user \"u\" is in namespaces \"a\" and \"b\"; a user belongs to one"
        );
        assert_eq!(
            check_all(&[ns("a", "u", &["h:1"]), ns("a", "v", &["h:2"])]).unwrap_err(),
            NamespaceConfigError::Duplicate { name: "a".into() }
        );
        assert!(matches!(
            check_all(&[ns("a", "u", &["h:1"]), ns("b", "v", &["h:1"])]).unwrap_err(),
            NamespaceConfigError::SharedBackend { instance, first, name }
                if instance == "h:1" && first == "a" && name == "b"
        ));
        assert_eq!(
            check_all(&[ns("a/b", "u", &["h:1"])]).unwrap_err(),
            NamespaceConfigError::BadName { name: "a/b".into() }
        );
        assert_eq!(
            check_all(&[ns(" ", "u", &["h:1"])]).unwrap_err(),
            NamespaceConfigError::NoName
        );
    }
}
