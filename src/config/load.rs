//! Turning TOML text into a validated Config: syntax and type errors with lines,
//! unknown-key warnings, the legacy `[proxy] require-backend-tls`, and partial merges.

use super::error::ConfigError;
use super::types::Config;
use std::path::Path;
use toml_edit::{ImDocument, Item, TableLike};

/// A loaded configuration plus the non-fatal findings the caller should log.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

const LEGACY_BACKEND_TLS: [&str; 2] = ["proxy", "require-backend-tls"];
const BACKEND_TLS: [&str; 2] = ["security", "require-backend-tls"];

/// Parse a whole configuration file's text; absent keys take their defaults.
pub fn parse_str(text: &str) -> Result<Loaded, ConfigError> {
    let doc = parse_doc(text)?;
    let mut warnings = unknown_key_warnings(&doc, text)?;
    let mut config: Config = toml::from_str(text).map_err(|e| type_error(&doc, text, &e))?;
    config.proxy.pd_addrs_explicit = find(&doc, &["proxy", "pd-addrs"]).is_some();
    apply_legacy(&doc, text, &mut config, &mut warnings)?;
    super::tiproxy_keys::apply(&doc, text, &mut warnings)?;
    finish(config, &doc, text, warnings)
}

/// Read and parse a configuration file; I/O errors name the file.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text)
}

/// Overlay a partial TOML document on a running config. Tables merge key by key;
/// any other value (arrays included) replaces the old one. Lines in errors and
/// warnings refer to the partial document.
pub fn merge_partial(base: &Config, partial_toml: &str) -> Result<Loaded, ConfigError> {
    let doc = parse_doc(partial_toml)?;
    let mut warnings = unknown_key_warnings(&doc, partial_toml)?;
    // Type-check the partial on its own first: the merged value has no spans to report.
    let _: Config = toml::from_str(partial_toml).map_err(|e| type_error(&doc, partial_toml, &e))?;
    let overlay: toml::Table =
        toml::from_str(partial_toml).map_err(|e| type_error(&doc, partial_toml, &e))?;
    let mut merged = toml::Table::try_from(base).map_err(|e| internal(e.to_string()))?;
    deep_merge(&mut merged, overlay);
    let mut config: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| internal(e.to_string()))?;
    config.proxy.pd_addrs_explicit =
        base.proxy.pd_addrs_explicit || find(&doc, &["proxy", "pd-addrs"]).is_some();
    keep_redacted_secrets(base, &mut config);
    apply_legacy(&doc, partial_toml, &mut config, &mut warnings)?;
    super::tiproxy_keys::apply(&doc, partial_toml, &mut warnings)?;
    finish(config, &doc, partial_toml, warnings)
}

/// A secret sent back as the API showed it (`<set>`) means "unchanged", not that text.
fn keep_redacted_secrets(base: &Config, config: &mut Config) {
    use super::secret::REDACTED;
    if &*config.api.password == REDACTED {
        config.api.password = base.api.password.clone();
    }
    if &*config.proxy.service_account.password == REDACTED {
        config.proxy.service_account.password = base.proxy.service_account.password.clone();
    }
}

fn internal(message: String) -> ConfigError {
    ConfigError::Syntax { line: 0, message }
}

fn deep_merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_doc(text: &str) -> Result<ImDocument<&str>, ConfigError> {
    ImDocument::parse(text).map_err(|e| ConfigError::Syntax {
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().trim().to_string(),
    })
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Validate, and point an Invalid error at the line where the user wrote the key.
fn finish(
    config: Config,
    doc: &ImDocument<&str>,
    text: &str,
    warnings: Vec<String>,
) -> Result<Loaded, ConfigError> {
    if let Err(mut e) = config.validate() {
        let (path, line): (Vec<&str>, _) = match &mut e {
            ConfigError::Invalid { key, line, .. } => (key.split('.').collect(), line),
            ConfigError::Namespace { line, .. } => (vec!["namespace"], line),
            _ => return Err(e),
        };
        *line = find(doc, &path)
            .and_then(|(k, _)| k)
            .map(|s| line_of(text, s));
        return Err(e);
    }
    Ok(Loaded { config, warnings })
}

/// The key's span start (if known) and its item, following tables and inline tables.
pub(super) fn find<'a>(
    doc: &'a ImDocument<&str>,
    path: &[&str],
) -> Option<(Option<usize>, &'a Item)> {
    let mut table: &dyn TableLike = doc.as_table();
    let (last, parents) = path.split_last()?;
    for p in parents {
        table = table.get(p)?.as_table_like()?;
    }
    let (key, item) = table.get_key_value(last)?;
    Some((key.span().map(|s| s.start), item))
}

/// The copy of `Config::default()` as a TOML tree is the schema: it cannot drift
/// from the structs because it is generated from them.
pub(super) fn schema() -> toml::Table {
    toml::Table::try_from(Config::default()).expect("the default config serializes")
}

/// Unknown keys are warnings, as in TiProxy, except under `[security]` and `[api]`: there a
/// typo (`pasword`, `auto-cert`) would leave authentication or TLS off while looking set.
fn unknown_key_warnings(doc: &ImDocument<&str>, text: &str) -> Result<Vec<String>, ConfigError> {
    let mut found = Vec::new();
    walk_unknown(doc.as_table(), &schema(), "", text, &mut found);
    if let Some((key, line)) = found
        .iter()
        .find(|(k, _)| k.starts_with("security.") || k.starts_with("api."))
    {
        return Err(ConfigError::UnknownSecurityKey {
            key: key.clone(),
            line: *line,
        });
    }
    Ok(found
        .into_iter()
        .map(|(dotted, line)| format!("unknown config key \"{dotted}\" at line {line} is ignored"))
        .collect())
}

fn walk_unknown(
    table: &dyn TableLike,
    known: &toml::Table,
    prefix: &str,
    text: &str,
    out: &mut Vec<(String, usize)>,
) {
    for (name, item) in table.iter() {
        let dotted = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        match known.get(name) {
            // Tables with free-form keys; type mismatches are serde's to report.
            Some(toml::Value::Table(sub))
                if dotted != "labels" && dotted != "proxy.backend-status-addrs" =>
            {
                if let Some(t) = item.as_table_like() {
                    walk_unknown(t, sub, &dotted, text, out);
                }
            }
            Some(_) => {}
            None if dotted == LEGACY_BACKEND_TLS.join(".") => {}
            None if super::tiproxy_keys::is_tiproxy_key(&dotted) => {}
            None => {
                let line = table
                    .get_key_value(name)
                    .and_then(|(k, _)| k.span())
                    .map_or(0, |s| line_of(text, s.start));
                out.push((dotted, line));
            }
        }
    }
}

/// TiProxy 0.1.x and old TiUP wrote `require-backend-tls` under `[proxy]`. Honour it
/// unless the current `[security]` key is also present, which wins.
fn apply_legacy(
    doc: &ImDocument<&str>,
    text: &str,
    config: &mut Config,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let Some((span, item)) = find(doc, &LEGACY_BACKEND_TLS) else {
        return Ok(());
    };
    let line = span.map(|s| line_of(text, s));
    let Some(v) = item.as_bool() else {
        return Err(ConfigError::Invalid {
            key: LEGACY_BACKEND_TLS.join("."),
            value: item_text(item, text),
            reason: "expected true or false".into(),
            line,
        });
    };
    if find(doc, &BACKEND_TLS).is_none() {
        config.security.require_backend_tls = v;
    }
    warnings.push(format!(
        "config key \"proxy.require-backend-tls\" at line {} is deprecated; use \"security.require-backend-tls\"",
        line.unwrap_or(0)
    ));
    Ok(())
}

fn item_text(item: &Item, text: &str) -> String {
    item.span()
        .and_then(|s| text.get(s))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| item.to_string().trim().to_string())
}

/// Turn serde's "invalid type: string "abc", expected u64" into a message naming the
/// dotted key, the value as written and its line, by locating the value the error's
/// span falls in.
fn type_error(doc: &ImDocument<&str>, text: &str, e: &toml::de::Error) -> ConfigError {
    let reason = friendly_reason(e.message());
    let Some(span) = e.span() else {
        return ConfigError::Syntax {
            line: 1,
            message: e.message().to_string(),
        };
    };
    let mut best: Option<(String, Option<usize>, String)> = None;
    locate(doc.as_table(), "", span.start, text, &mut best);
    match best {
        Some((key, key_start, value)) => ConfigError::Invalid {
            key,
            value,
            reason,
            line: Some(line_of(text, key_start.unwrap_or(span.start))),
        },
        None => ConfigError::Syntax {
            line: line_of(text, span.start),
            message: e.message().trim().to_string(),
        },
    }
}

/// Find the innermost key whose value spans `offset`.
fn locate(
    table: &dyn TableLike,
    prefix: &str,
    offset: usize,
    text: &str,
    best: &mut Option<(String, Option<usize>, String)>,
) {
    for (name, item) in table.iter() {
        let dotted = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        let key_start = table
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .map(|s| s.start);
        let inline_or_value = item.is_value();
        if let Some(s) = item.span() {
            if inline_or_value && s.start <= offset && offset < s.end.max(s.start + 1) {
                *best = Some((dotted.clone(), key_start, item_text(item, text)));
            }
        }
        if let Some(t) = item.as_table_like() {
            locate(t, &dotted, offset, text, best);
        }
    }
}

fn friendly_reason(msg: &str) -> String {
    let msg = msg.trim();
    let expected = msg.rsplit_once("expected ").map(|(_, e)| e.trim());
    match expected {
        Some("u64" | "u32" | "usize" | "u16" | "u8") => "expected a non-negative integer".into(),
        Some("a boolean") => "expected true or false".into(),
        Some("a string") => "expected a string".into(),
        Some("a sequence") => "expected an array".into(),
        Some(e) if e.starts_with("struct") || e.starts_with("a map") => "expected a table".into(),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_default() {
        let l = parse_str("").unwrap();
        assert_eq!(l.config, Config::default());
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn values_and_explicit_pd() {
        let l = parse_str(
            "[proxy]\naddr = \"127.0.0.1:6001\"\nbackend-addrs = [\"127.0.0.1:4000\"]\n\
             [log.log-file]\nfilename = \"x.log\"\n[labels]\nzone = \"east\"\n",
        )
        .unwrap();
        assert_eq!(l.config.proxy.addr, "127.0.0.1:6001");
        assert_eq!(l.config.log.log_file.filename, "x.log");
        assert_eq!(l.config.labels["zone"], "east");
        assert!(
            l.config.pd_addr_list().is_empty(),
            "no PD with static backends"
        );
        let l =
            parse_str("[proxy]\npd-addrs = \"pd:2379\"\nbackend-addrs = [\"b:4000\"]\n").unwrap();
        assert_eq!(l.config.pd_addr_list(), vec!["pd:2379"]);
    }

    #[test]
    fn unknown_keys_warn_with_line() {
        let text = "[proxy]\naddr = \"0.0.0.0:6000\"\n\n\nmax-conections = 5\n[nope]\na = 1\n\
                    [labels]\nanything = \"ok\"\n";
        let l = parse_str(text).unwrap();
        assert_eq!(
            l.warnings,
            vec![
                "unknown config key \"proxy.max-conections\" at line 5 is ignored",
                "unknown config key \"nope\" at line 6 is ignored",
            ]
        );
        let e = parse_str("[proxy]\n[security.sql-tls]\ncaa = \"x\"\n").unwrap_err();
        assert!(
            e.to_string().contains("`security.sql-tls.caa` at line 3"),
            "{e}"
        );
        let e = parse_str("[api]\nuser = \"a\"\npasword = \"b\"\n").unwrap_err();
        assert!(e.to_string().contains("`api.pasword` at line 3"), "{e}");
        let e = merge_partial(
            &Config::default(),
            "[security.server-tls]\nauto-cert = true\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("security.server-tls.auto-cert"),
            "{e}"
        );
        let l = parse_str(
            "[proxy]\nbackend-status-addrs = { \"a:4000\" = \"a:10080\" }\n\
             [labels]\nzone = \"a\"\n",
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.config.proxy.backend_status_addrs["a:4000"], "a:10080");
        let l = parse_str("labels = { zone = \"a\", rack = \"b\" }\nzzz = 1\n").unwrap();
        assert_eq!(
            l.warnings,
            vec!["unknown config key \"zzz\" at line 2 is ignored"]
        );
    }

    #[test]
    fn type_errors_name_key_value_line() {
        let text = "# c\n[proxy]\naddr = \"0.0.0.0:6000\"\n\n\n\nmax-connections = \"abc\"\n";
        let e = parse_str(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for `proxy.max-connections` = \"abc\": expected a non-negative integer (line 7)"
        );
        let e = parse_str("[security.sql-tls]\nskip-ca = \"yes\"\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("security.sql-tls.skip-ca") && s.contains("line 2"),
            "{s}"
        );
        let e = parse_str("[proxy]\nbackend-addrs = [\"a:1\", 2]\n").unwrap_err();
        assert!(e.to_string().contains("proxy.backend-addrs"), "{e}");
        let e = parse_str("[health]\nfailure-threshold = -1\n").unwrap_err();
        assert!(e.to_string().contains("health.failure-threshold"), "{e}");
    }

    #[test]
    fn syntax_errors_have_lines() {
        match parse_str("[proxy]\naddr = \n").unwrap_err() {
            ConfigError::Syntax { line, .. } => assert_eq!(line, 2),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn validation_errors_get_lines() {
        let e = parse_str("[log]\n\nlevel = \"loud\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for `log.level` = \"loud\": expected one of trace, debug, info, warn, error (line 3)"
        );
        let e = parse_str("[proxy]\n\n[[namespace]]\nnamespace = \"a\"\n").unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Namespace {
                    source: crate::config::namespace::NamespaceConfigError::NoBackends { name },
                    ..
                } if name == "a"
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "invalid value for `namespace` = [1 namespaces]: namespace \"a\" names no backends: \
             set backend.instances or backend.labels (line 3)"
        );
    }

    #[test]
    fn legacy_require_backend_tls() {
        let l = parse_str("[proxy]\nrequire-backend-tls = true\n").unwrap();
        assert!(l.config.security.require_backend_tls);
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("deprecated"), "{:?}", l.warnings);
        let out = toml::to_string(&l.config).unwrap();
        assert_eq!(
            out.matches("require-backend-tls").count(),
            1,
            "only [security]: {out}"
        );
        let l = parse_str(
            "[proxy]\nrequire-backend-tls = true\n[security]\nrequire-backend-tls = false\n",
        )
        .unwrap();
        assert!(!l.config.security.require_backend_tls, "[security] wins");
        assert!(parse_str("[proxy]\nrequire-backend-tls = 1\n").is_err());
    }

    #[test]
    fn load_file_names_missing_file() {
        let e = load_file(Path::new("/definitely/missing/proxy.toml")).unwrap_err();
        assert!(e.to_string().contains("/definitely/missing/proxy.toml"));
    }

    #[test]
    fn merge_overlays_tables_and_replaces_arrays() {
        let mut base = Config::default();
        base.proxy.backend_addrs = vec!["a:1".into(), "b:2".into()];
        base.labels.insert("zone".into(), "east".into());
        let l = merge_partial(
            &base,
            "[proxy]\nmax-connections = 9\nbackend-addrs = [\"c:3\"]\n[labels]\nrack = \"r1\"\n",
        )
        .unwrap();
        assert_eq!(l.config.proxy.max_connections, 9);
        assert_eq!(l.config.proxy.backend_addrs, vec!["c:3"]);
        assert_eq!(l.config.labels.len(), 2);
        assert_eq!(l.config.proxy.addr, base.proxy.addr);
        assert!(l.config.pd_addr_list().is_empty());
        let l = merge_partial(&base, "proxy.pd-addrs = \"pd:2379\"\n").unwrap();
        assert_eq!(l.config.pd_addr_list(), vec!["pd:2379"]);
        let e = merge_partial(&base, "[proxy]\nmax-connections = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = merge_partial(&base, "[health]\ninterval-ms = 0\n").unwrap_err();
        assert!(e.to_string().contains("health.interval-ms"), "{e}");
        let l = merge_partial(&base, "[proxy]\nbogus = 1\n").unwrap();
        assert_eq!(l.warnings.len(), 1);
        let mut secret = base.clone();
        secret.api.password = "pw".into();
        let l = merge_partial(&secret, "[api]\npassword = \"<set>\"\n").unwrap();
        assert_eq!(
            l.config.api.password.expose(),
            "pw",
            "the marker keeps the secret"
        );
        let l = merge_partial(&secret, "[api]\npassword = \"new\"\n").unwrap();
        assert_eq!(l.config.api.password.expose(), "new");
    }
}

#[cfg(test)]
mod sample_file_tests {
    use super::*;

    /// The shipped sample documents every key at its default, so loading it must
    /// change nothing and warn about nothing.
    #[test]
    fn shipped_sample_is_exactly_the_defaults() {
        let l = parse_str(include_str!("../../conf/proxy.toml")).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.config, Config::default());
    }

    /// Every leaf key of the defaults appears in the sample (pd-addrs commented out on purpose).
    #[test]
    fn shipped_sample_mentions_every_key() {
        let text = include_str!("../../conf/proxy.toml");
        let v = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        collect_leaves(&v, &mut missing, text);
        assert!(missing.is_empty(), "{missing:?}");
    }

    fn collect_leaves(v: &serde_json::Value, missing: &mut Vec<String>, text: &str) {
        for (k, child) in v.as_object().unwrap() {
            if child.is_object() && k != "labels" {
                collect_leaves(child, missing, text);
            } else if !text.lines().any(|l| {
                l.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{k} ="))
            }) {
                missing.push(k.clone());
            }
        }
    }
}
