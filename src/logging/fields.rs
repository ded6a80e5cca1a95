//! Collecting an event's or span's fields once, then rendering them TiDB-style or as JSON.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};

/// One recorded value, kept typed so JSON can emit numbers and booleans as such.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Str(s) => f.write_str(s),
            FieldValue::I64(v) => write!(f, "{v}"),
            FieldValue::U64(v) => write!(f, "{v}"),
            FieldValue::F64(v) => write!(f, "{v}"),
            FieldValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Fields of one event or span. Events bridged from the `log` crate carry their
/// source location as `log.file`/`log.line` fields; those become the caller.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub message: Option<String>,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub log_file: Option<String>,
    pub log_line: Option<u64>,
}

impl Collected {
    fn push(&mut self, field: &Field, value: FieldValue) {
        match field.name() {
            "message" => self.message = Some(value.to_string()),
            "log.file" => self.log_file = Some(value.to_string()),
            "log.line" => {
                if let FieldValue::U64(l) = value {
                    self.log_line = Some(l);
                } else if let FieldValue::I64(l) = value {
                    self.log_line = u64::try_from(l).ok();
                }
            }
            name if name.starts_with("log.") => {}
            name => self.fields.push((name, value)),
        }
    }
}

impl Visit for Collected {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, FieldValue::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, FieldValue::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, FieldValue::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, FieldValue::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, FieldValue::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, FieldValue::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, FieldValue::Str(value.to_string()));
    }
}

/// TiDB leaves plain tokens bare and JSON-quotes anything with spaces, brackets,
/// quotes, `=`, control or non-ASCII characters, so every line stays machine-splittable.
pub(crate) fn tidb_quote(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '=' | '[' | ']' | '\\'));
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(serde_json::to_string(s).unwrap_or_default())
    }
}

/// ` [k=v]` for each field, values quoted as TiDB does.
pub(crate) fn render_tidb(
    fields: &[(&'static str, FieldValue)],
    out: &mut impl fmt::Write,
) -> fmt::Result {
    for (k, v) in fields {
        match v {
            FieldValue::Str(s) => write!(out, " [{k}={}]", tidb_quote(s))?,
            other => write!(out, " [{k}={other}]")?,
        }
    }
    Ok(())
}

/// `"k":v` pairs joined by commas (no braces), numbers and booleans unquoted.
pub(crate) fn render_json(fields: &[(&'static str, FieldValue)], out: &mut String) {
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(k));
        out.push(':');
        let _ = match v {
            FieldValue::Str(s) => write!(out, "{}", json_str(s)),
            FieldValue::I64(n) => write!(out, "{n}"),
            FieldValue::U64(n) => write!(out, "{n}"),
            FieldValue::F64(n) if n.is_finite() => write!(out, "{n}"),
            FieldValue::F64(n) => write!(out, "{}", json_str(&n.to_string())),
            FieldValue::Bool(b) => write!(out, "{b}"),
        };
    }
}

pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_tidb() {
        assert_eq!(tidb_quote("127.0.0.1:4000"), "127.0.0.1:4000");
        assert_eq!(tidb_quote("new-conn"), "new-conn");
        assert_eq!(tidb_quote("message text"), "\"message text\"");
        assert_eq!(tidb_quote(""), "\"\"");
        assert_eq!(tidb_quote("a=b"), "\"a=b\"");
        assert_eq!(tidb_quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(tidb_quote("héllo"), "\"héllo\"");
    }

    #[test]
    fn renders_both_styles() {
        let f = vec![
            ("conn", FieldValue::U64(12)),
            ("backend", FieldValue::Str("127.0.0.1:4000".into())),
            ("err", FieldValue::Str("timed out".into())),
            ("ok", FieldValue::Bool(false)),
        ];
        let mut s = String::new();
        render_tidb(&f, &mut s).unwrap();
        assert_eq!(
            s,
            " [conn=12] [backend=127.0.0.1:4000] [err=\"timed out\"] [ok=false]"
        );
        let mut j = String::new();
        render_json(&f, &mut j);
        assert_eq!(
            j,
            "\"conn\":12,\"backend\":\"127.0.0.1:4000\",\"err\":\"timed out\",\"ok\":false"
        );
    }
}
