//! What stops tiproxyctl before it asks the proxy anything: an input it cannot read, a
//! namespace file it cannot use, a TiProxy subcommand it does not know. Each exits with
//! EXIT_USAGE and says which file or argument to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read --password-file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the namespace file is not UTF-8")]
    NamespaceNotUtf8,
    #[error("bad namespace file: {0}")]
    NamespaceFile(#[source] toml::de::Error),
    #[error("the namespace file sets no `namespace = \"NAME\"`")]
    NamespaceUnnamed,
    #[error("{0}")]
    NamespaceJson(#[source] serde_json::Error),
    /// `namespace` or `traffic` without a verb it knows; lists the verbs.
    #[error("{group} needs a subcommand: {verbs}")]
    Subcommand {
        group: &'static str,
        verbs: &'static str,
    },
    #[error("not a TiProxy group")]
    NotTiproxyGroup,
    #[error("traffic {verb}: unexpected argument {arg:?}")]
    TrafficArgument { verb: String, arg: String },
    #[error("traffic {verb}: unknown flag --{name} (flags: {known})")]
    TrafficFlag {
        verb: String,
        name: String,
        known: String,
    },
    #[error("traffic {verb}: --{name} needs a value")]
    TrafficValue { verb: String, name: String },
    #[error("traffic {verb}: --{name} takes true or false")]
    TrafficBoolean { verb: String, name: String },
    #[error("traffic replay: username is required")]
    TrafficUser,
    #[error("cannot read the password: {0}")]
    Password(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_cannot_be_read_is_named_with_its_cause() {
        let e = UsageError::PasswordFile {
            path: "/run/secret/pw".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("cannot read --password-file /run/secret/pw: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
