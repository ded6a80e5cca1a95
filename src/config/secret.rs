//! A configuration string that is a secret: never printed by `Debug`, wiped from memory when
//! dropped, and shown by the API only as set or unset.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Deref;
use zeroize::Zeroize;

/// What `GET /api/admin/config` shows in place of a secret that is set. A PUT that sends it
/// back unchanged keeps the secret, so a GET-edit-PUT round trip does not overwrite it.
pub const REDACTED: &str = "<set>";

/// Dotted paths of every secret key, for redaction.
pub const SECRET_KEYS: &[&[&str]] = &[
    &["proxy", "service-account", "password"],
    &["api", "password"],
];

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret's text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Replaces every set secret in a serialized config with [`REDACTED`].
pub fn redact(table: &mut toml::Table) {
    for path in SECRET_KEYS {
        if let Some(toml::Value::String(s)) = lookup(table, path) {
            if !s.is_empty() {
                s.zeroize();
                *s = REDACTED.to_owned();
            }
        }
    }
}

/// Keys that name accounts: shown to admins only (`GET /api/admin/config` is open, and an
/// account name is half of a login).
pub const IDENTITY_KEYS: &[&[&str]] = &[&["proxy", "service-account", "user"], &["api", "user"]];

/// Marks every account name as redacted: [`IDENTITY_KEYS`] and each namespace's users.
pub fn redact_identities(table: &mut toml::Table) {
    for path in IDENTITY_KEYS {
        if let Some(toml::Value::String(s)) = lookup(table, path) {
            if !s.is_empty() {
                *s = REDACTED.to_owned();
            }
        }
    }
    let Some(toml::Value::Array(namespaces)) = table.get_mut("namespace") else {
        return;
    };
    for ns in namespaces {
        let Some(frontend) = ns
            .as_table_mut()
            .and_then(|t| t.get_mut("frontend"))
            .and_then(|f| f.as_table_mut())
        else {
            continue;
        };
        if let Some(toml::Value::String(u)) = frontend.get_mut("user") {
            *u = REDACTED.to_owned();
        }
        if let Some(toml::Value::Array(users)) = frontend.get_mut("users") {
            for u in users.iter_mut() {
                *u = toml::Value::String(REDACTED.to_owned());
            }
        }
    }
}

fn lookup<'a>(table: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get_mut(*first)?;
    if rest.is_empty() {
        return Some(v);
    }
    lookup(v.as_table_mut()?, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_redacted_with_namespace_users() {
        let mut t: toml::Table = toml::from_str(
            r#"
            [api]
            user = "admin"
            [[namespace]]
            namespace = "a"
            frontend = { user = "alice", users = ["bob"] }
            "#,
        )
        .unwrap();
        redact_identities(&mut t);
        let text = toml::to_string(&t).unwrap();
        for name in ["admin", "alice", "bob"] {
            assert!(!text.contains(&format!("\"{name}\"")), "{text}");
        }
        assert!(text.contains("namespace = \"a\""), "{text}");
    }

    #[test]
    fn debug_hides_and_redact_marks_set_secrets() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        let mut c = crate::config::Config::default();
        c.api.password = "pw".into();
        let mut t = toml::Table::try_from(&c).unwrap();
        redact(&mut t);
        let text = toml::to_string(&t).unwrap();
        assert!(!text.contains("\"pw\""), "{text}");
        assert!(text.contains("password = \"<set>\""), "{text}");
        assert!(
            text.contains("password = \"\""),
            "unset stays empty: {text}"
        );
    }
}
