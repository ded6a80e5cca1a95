//! Keys of the Go TiProxy's `proxy.toml` that have no field of their own here: each is mapped
//! onto ours, accepted as not applicable (with the reason, in a warning), or refused when a
//! value is set that we cannot honour and ignoring it would open or misroute something.

use super::error::ConfigError;
use super::load::{find, line_of};
use toml_edit::{ImDocument, Item};

/// What happens to one TiProxy key (or every key under a TiProxy-only table).
enum Handling {
    /// Accepted; a warning says why it has no effect here.
    NotApplicable(&'static str),
    /// Accepted while empty/false/zero; any other value refuses to start, for this reason.
    RefuseWhenSet(&'static str),
    /// Our `[api] user/password` always apply when set, so this switch adds nothing.
    BasicAuthSwitch,
}

use Handling::*;

const KEEPALIVE_WHY: &str = "TCP keep-alive probes are left to the OS here; dead clients are found by proxy.client-read-timeout and dead backends by the health checks ([health])";

/// TiProxy keys with a fixed handling, by dotted path; a path naming a table covers its
/// whole subtree.
const KEYS: &[(&str, Handling)] = &[
    ("proxy.port-range", RefuseWhenSet("extra listening ports for port-based routing are not supported; list one address in proxy.addr")),
    ("proxy.backend-clusters", RefuseWhenSet("several backend clusters behind one proxy are not supported; run one proxy per cluster (pd-addrs or backend-addrs)")),
    ("proxy.public-endpoints", NotApplicable("it only splits TiProxy Cloud's metering of public and private traffic, which this proxy does not do")),
    ("proxy.high-memory-usage-reject-threshold", NotApplicable("no garbage collector here: memory is bounded per connection by conn-buffer-size and in total by max-connections")),
    ("proxy.tcp-keep-alive", NotApplicable(KEEPALIVE_WHY)),
    ("proxy.frontend-keepalive", NotApplicable(KEEPALIVE_WHY)),
    ("proxy.backend-healthy-keepalive", NotApplicable(KEEPALIVE_WHY)),
    ("proxy.backend-unhealthy-keepalive", NotApplicable(KEEPALIVE_WHY)),
    ("api.proxy-protocol", RefuseWhenSet("the status port does not read PROXY headers: every caller would look like the load balancer, and a loopback one would be trusted as an admin")),
    ("api.enable-basic-auth", BasicAuthSwitch),
    ("log.simple", NotApplicable("log lines are always the encoder's full format")),
    ("security.server-tls.rsa-key-size", NotApplicable("auto-certs here are ECDSA P-256, at least as strong as RSA 3072")),
    ("security.server-http-tls.rsa-key-size", NotApplicable("auto-certs here are ECDSA P-256, at least as strong as RSA 3072")),
    ("security.cluster-tls.rsa-key-size", NotApplicable("auto-certs apply to server sides only")),
    ("security.sql-tls.rsa-key-size", NotApplicable("auto-certs apply to server sides only")),
    ("security.server-tls.autocert-expire-duration", NotApplicable("an auto-generated certificate lives as long as the process; restart to renew it, or configure cert/key files (reloaded when they change)")),
    ("security.server-http-tls.autocert-expire-duration", NotApplicable("an auto-generated certificate lives as long as the process; restart to renew it, or configure cert/key files (reloaded when they change)")),
    ("security.cluster-tls.autocert-expire-duration", NotApplicable("auto-certs apply to server sides only")),
    ("security.sql-tls.autocert-expire-duration", NotApplicable("auto-certs apply to server sides only")),
    ("ha.virtual-ip", RefuseWhenSet("binding a virtual IP is not supported; put a load balancer or keepalived in front, or clients would dial an address nobody holds")),
    ("ha.interface", NotApplicable("used only with ha.virtual-ip, which is not supported")),
    ("ha.garp-burst-count", NotApplicable("used only with ha.virtual-ip, which is not supported")),
    ("ha.garp-refresh-count", NotApplicable("used only with ha.virtual-ip, which is not supported")),
    ("metering", NotApplicable("TiProxy Cloud's metering upload is not part of this proxy")),
    ("advance", NotApplicable("TiProxy 0.1's namespace switch; see docs/compat.md for namespaces")),
];

/// Whether `dotted` is a TiProxy key handled here (so it is not reported as unknown).
pub(super) fn is_tiproxy_key(dotted: &str) -> bool {
    handling_of(dotted).is_some()
        || KEYS
            .iter()
            .any(|(k, _)| k.starts_with(&format!("{dotted}.")))
}

fn handling_of(dotted: &str) -> Option<&'static Handling> {
    KEYS.iter()
        .find(|(k, _)| dotted == *k || dotted.starts_with(&format!("{k}.")))
        .map(|(_, h)| h)
}

/// Checks every TiProxy-only key present in `doc`, adding warnings for the ones without
/// effect; an error for one that must not be ignored. (TiProxy keys we honour are fields of
/// `Config` and never reach here.)
pub(super) fn apply(
    doc: &ImDocument<&str>,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut leaves = Vec::new();
    collect_leaves(doc.as_table(), "", &mut leaves);
    let ours = super::load::schema();
    for dotted in leaves {
        let Some(handling) = handling_of(&dotted) else {
            continue;
        };
        if is_ours(&ours, &dotted) {
            continue;
        }
        let path: Vec<&str> = dotted.split('.').collect();
        let Some((span, item)) = find(doc, &path) else {
            continue;
        };
        let line = span.map(|s| line_of(text, s));
        let written = item_text(item, text);
        let invalid = |reason: &str| ConfigError::Invalid {
            key: dotted.clone(),
            value: written.clone(),
            reason: reason.to_string(),
            line,
        };
        match handling {
            NotApplicable(why) => warnings.push(format!(
                "TiProxy config key \"{dotted}\" at line {} has no effect here: {why}",
                line.unwrap_or(0)
            )),
            RefuseWhenSet(why) => {
                if is_set(item) {
                    return Err(invalid(why));
                }
            }
            BasicAuthSwitch => {
                if item.as_bool().is_none() {
                    return Err(invalid("expected true or false"));
                }
            }
        }
    }
    Ok(())
}

/// Dotted paths of every leaf value (arrays of tables count as one leaf).
fn collect_leaves(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<String>) {
    for (name, item) in table.iter() {
        let dotted = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        match item.as_table_like() {
            Some(t) if !item.is_array_of_tables() => collect_leaves(t, &dotted, out),
            _ => out.push(dotted),
        }
    }
}

/// A key that has become one of ours (a field of `Config`) is no longer TiProxy-only.
fn is_ours(schema: &toml::Table, dotted: &str) -> bool {
    let mut table = schema;
    let mut parts = dotted.split('.').peekable();
    while let Some(p) = parts.next() {
        match table.get(p) {
            Some(toml::Value::Table(t)) if parts.peek().is_some() => table = t,
            Some(_) => return parts.peek().is_none(),
            None => return false,
        }
    }
    false
}

/// Empty strings, empty arrays, false and zero are TiProxy's "off".
fn is_set(item: &Item) -> bool {
    match item {
        Item::None => false,
        Item::Value(v) => match v {
            toml_edit::Value::String(s) => !s.value().is_empty(),
            toml_edit::Value::Boolean(b) => *b.value(),
            toml_edit::Value::Integer(i) => *i.value() != 0,
            toml_edit::Value::Float(f) => *f.value() != 0.0,
            toml_edit::Value::Array(a) => !a.is_empty(),
            _ => true,
        },
        Item::ArrayOfTables(a) => !a.is_empty(),
        Item::Table(_) => true,
    }
}

fn item_text(item: &Item, text: &str) -> String {
    item.span()
        .and_then(|s| text.get(s))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| item.to_string().trim().to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::{merge_partial, parse_str, Config};

    #[test]
    fn tiproxy_sample_keys_start_with_reasons() {
        let text = "enable-traffic-replay = true\n[proxy]\ntcp-keep-alive = true\n\
                    high-memory-usage-reject-threshold = 0.9\nport-range = []\n\
                    [proxy.frontend-keepalive]\nenabled = true\nidle = 60\n\
                    [api]\nenable-basic-auth = false\nproxy-protocol = \"\"\n\
                    [log]\nsimple = false\n[security]\nencryption-key-path = \"\"\n\
                    [security.server-tls]\nrsa-key-size = 4096\nautocert-expire-duration = \"72h\"\n\
                    [advance]\nignore-wrong-namespace = true\n[ha]\ngarp-burst-count = 5\n";
        let l = parse_str(text).unwrap();
        assert!(
            l.warnings
                .iter()
                .all(|w| w.starts_with("TiProxy config key") && w.contains("no effect here: ")),
            "{:?}",
            l.warnings
        );
        assert!(l
            .warnings
            .iter()
            .any(|w| w.contains("\"proxy.frontend-keepalive.idle\" at line 8")));
        assert!(!l.warnings.iter().any(|w| w.contains("port-range")));
        assert_eq!(
            l.config.proxy.max_connections,
            Config::default().proxy.max_connections
        );
    }

    #[test]
    fn balance_factor_keys_are_ours_and_checked() {
        let l = parse_str(
            "[balance.conn-count]\nmigrations-per-second = 2.5\ncount-ratio-threshold = 1.8\n\
             [balance.cpu]\nmigrations-per-second = 1\n[balance.status]\nmigrations-per-second = 0\n",
        )
        .unwrap();
        assert_eq!(l.config.balance.conn_count.migrations_per_second, 2.5);
        assert_eq!(l.config.balance.cpu.migrations_per_second, 1.0);
        assert_eq!(l.config.balance.effective_count_ratio(), 1.8);
        assert_eq!(
            l.config.balance.max_migrations_per_second,
            Config::default().balance.max_migrations_per_second
        );
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let e = parse_str("[balance.conn-count]\ncount-ratio-threshold = 0.5\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("balance.conn-count.count-ratio-threshold"),
            "{e}"
        );
        let e = parse_str("[balance.health]\nmigrations-per-second = -1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("balance.health.migrations-per-second"),
            "{e}"
        );
        let e = parse_str("[balance.memory]\nmigrations-per-second = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let l = merge_partial(
            &Config::default(),
            "[balance.location]\nmigrations-per-second = 7\n",
        )
        .unwrap();
        assert_eq!(l.config.balance.location.migrations_per_second, 7.0);
        // A misspelt key under a factor table is reported, not silently taken.
        let l = parse_str("[balance.cpu]\nmigration-per-second = 3\n").unwrap();
        assert_eq!(
            l.warnings,
            ["unknown config key \"balance.cpu.migration-per-second\" at line 2 is ignored"]
        );
    }

    #[test]
    fn keys_that_must_not_be_ignored_refuse_to_start() {
        for (text, key) in [
            ("[api]\nproxy-protocol = \"v2\"\n", "api.proxy-protocol"),
            ("[proxy]\nport-range = [6001, 6010]\n", "proxy.port-range"),
            ("[ha]\nvirtual-ip = \"10.0.0.1/24\"\n", "ha.virtual-ip"),
            (
                "[[proxy.backend-clusters]]\nname = \"a\"\npd-addrs = \"p:2379\"\n",
                "proxy.backend-clusters",
            ),
        ] {
            let e = parse_str(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }
}
