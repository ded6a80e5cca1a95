//! Namespaces as routing groups: which group a login's user belongs to and which backends each
//! group may use. A backend claimed by a namespace (one of its instances, or carrying all of
//! its labels; the first namespace in order wins) serves only that namespace's users; the
//! others form the default group. A user in no namespace goes to the namespace named
//! `default` when there is one (as in TiProxy), else to the default group.

use crate::config::namespace::NamespaceConfig;
use std::collections::BTreeMap;

/// The group a session routes in: a namespace's name, or `None` for the default group.
pub type Group = Option<String>;

/// The name TiProxy gives the namespace of users it finds nowhere else.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespaces {
    list: Vec<Compiled>,
}

#[derive(Debug, Clone, PartialEq)]
struct Compiled {
    name: String,
    users: Vec<String>,
    instances: Vec<String>,
    labels: BTreeMap<String, String>,
}

impl Namespaces {
    /// From checked config (`config::namespace::check_all`).
    pub fn from_config(list: &[NamespaceConfig]) -> Self {
        Namespaces {
            list: list
                .iter()
                .map(|n| Compiled {
                    name: n.namespace.trim().to_string(),
                    users: n.all_users().map(str::to_string).collect(),
                    instances: n.instances().map(str::to_string).collect(),
                    labels: n.backend.labels.clone(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The group a login as `user` routes in.
    pub fn group_of_user(&self, user: &str) -> Group {
        self.list
            .iter()
            .find(|n| n.users.iter().any(|u| u == user))
            .or_else(|| self.list.iter().find(|n| n.name == DEFAULT_NAMESPACE))
            .map(|n| n.name.clone())
    }

    /// The group a backend serves.
    pub fn group_of_backend(&self, addr: &str, labels: &BTreeMap<String, String>) -> Group {
        self.list
            .iter()
            .find(|n| {
                n.instances.iter().any(|i| i == addr)
                    || (!n.labels.is_empty()
                        && n.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .map(|n| n.name.clone())
    }

    /// Whether a session in `group` may use the backend at `addr` with `labels`.
    pub fn allows(&self, group: &Group, addr: &str, labels: &BTreeMap<String, String>) -> bool {
        self.is_empty() || self.group_of_backend(addr, labels) == *group
    }

    /// How a group is named in errors and logs.
    pub fn describe(group: &Group) -> String {
        match group {
            Some(n) => format!("namespace {n:?}"),
            None => "the default group (backends in no namespace)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::namespace::{NamespaceBackend, NamespaceFrontend};

    fn ns(name: &str, users: &[&str], inst: &[&str], labels: &[(&str, &str)]) -> NamespaceConfig {
        NamespaceConfig {
            namespace: name.into(),
            frontend: NamespaceFrontend {
                users: users.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            backend: NamespaceBackend {
                instances: inst.iter().map(|s| s.to_string()).collect(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn users_and_backends_fall_into_groups() {
        let n = Namespaces::from_config(&[
            ns("a", &["alice"], &["h:1"], &[]),
            ns("batch", &["bob", "carol"], &[], &[("group", "batch")]),
        ]);
        assert_eq!(n.group_of_user("alice"), Some("a".into()));
        assert_eq!(n.group_of_user("carol"), Some("batch".into()));
        assert_eq!(n.group_of_user("dave"), None);
        let none = labels(&[]);
        assert!(n.allows(&Some("a".into()), "h:1", &none));
        assert!(!n.allows(&None, "h:1", &none));
        assert!(n.allows(&None, "h:2", &none));
        let batch = labels(&[("group", "batch"), ("zone", "x")]);
        assert!(n.allows(&Some("batch".into()), "h:3", &batch));
        assert!(!n.allows(&None, "h:3", &batch));
        assert!(!n.allows(&Some("a".into()), "h:3", &batch));
        assert!(Namespaces::default().allows(&Some("x".into()), "h:1", &none));
    }

    #[test]
    fn unmatched_users_go_to_a_namespace_named_default() {
        let n = Namespaces::from_config(&[
            ns("a", &["alice"], &["h:1"], &[]),
            ns("default", &[], &["h:2"], &[]),
        ]);
        assert_eq!(n.group_of_user("dave"), Some("default".into()));
        assert!(n.allows(&n.group_of_user("dave"), "h:2", &labels(&[])));
        assert!(!n.allows(&n.group_of_user("dave"), "h:1", &labels(&[])));
    }
}
