//! Rebuilding a MySQL or MariaDB session on a new backend: reading the state of the live old
//! session (current database, session variables that differ from global, user variables) as
//! SQL, and replaying it with the prepared statements the proxy tracked.

use super::sql::{ident, prepare, query, quote, SqlError};
use super::state::Tracked;
use crate::protocol::PacketConn;

/// Session variables that cannot or must not be copied to another connection.
const NOT_COPIED: &[&str] = &[
    "TIMESTAMP",
    "PSEUDO_THREAD_ID",
    "LAST_INSERT_ID",
    "INSERT_ID",
    "RAND_SEED1",
    "RAND_SEED2",
    "IDENTITY",
    "SERVER_ID",
    "SQL_LOG_BIN",
    "SQL_LOG_OFF",
    "PSEUDO_SLAVE_MODE",
    "SKIP_REPLICATION",
    "GTID_DOMAIN_ID",
    "GTID_SEQ_NO",
    "GTID_NEXT",
    "IN_TRANSACTION",
    "WARNING_COUNT",
    "ERROR_COUNT",
    "PROXY_USER",
    "EXTERNAL_USER",
    "LAST_GTID",
];

fn is_numeric_type(t: &[u8]) -> bool {
    let t = String::from_utf8_lossy(t).to_ascii_uppercase();
    [
        "INT",
        "BIGINT",
        "DOUBLE",
        "DECIMAL",
        "INT UNSIGNED",
        "BIGINT UNSIGNED",
    ]
    .iter()
    .any(|n| t == *n)
}

fn numeric_literal(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'));
    ok.then(|| s.to_owned())
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02X}")).collect()
}

fn text(v: &Option<Vec<u8>>) -> &[u8] {
    v.as_deref().unwrap_or_default()
}

/// SQL statements that recreate the old session's state (MariaDB's information_schema).
/// Returns the statements and, if something could not be read, why.
pub async fn read_live_state(
    old: &mut PacketConn,
    deprecate_eof: bool,
) -> Result<(Vec<String>, Option<String>), SqlError> {
    let mut out = Vec::new();
    let mut gaps = None;
    let (mut settings, mut user_vars) = (Vec::new(), Vec::new());
    let vars = query(
        old,
        "SELECT VARIABLE_NAME, SESSION_VALUE, VARIABLE_TYPE FROM information_schema.SYSTEM_VARIABLES \
         WHERE VARIABLE_SCOPE = 'SESSION' AND READ_ONLY = 'NO' AND NOT (SESSION_VALUE <=> GLOBAL_VALUE) \
         ORDER BY VARIABLE_NAME",
        deprecate_eof,
    )
    .await?;
    for r in vars {
        let name = String::from_utf8_lossy(text(&r[0])).to_ascii_uppercase();
        if NOT_COPIED.contains(&name.as_str()) || name.starts_with("WSREP") {
            continue;
        }
        let Some(value) = &r[1] else { continue };
        let literal = if is_numeric_type(text(&r[2])) {
            numeric_literal(value).unwrap_or_else(|| quote(value))
        } else {
            quote(value)
        };
        settings.push(format!("SESSION {name} = {literal}"));
    }
    // One statement per kind instead of one per variable: a move of an idle session is a few
    // round trips, not a few dozen. Assignments in one SET apply in order, as separate ones do.
    if !settings.is_empty() {
        out.push(format!("SET {}", settings.join(", ")));
    }
    let db = query(old, "SELECT DATABASE()", deprecate_eof).await?;
    if let Some(Some(db)) = db.first().and_then(|r| r.first()) {
        out.push(format!("USE {}", ident(db)));
    }
    match query(
        old,
        "SELECT VARIABLE_NAME, VARIABLE_VALUE, VARIABLE_TYPE, CHARACTER_SET_NAME \
         FROM information_schema.USER_VARIABLES",
        deprecate_eof,
    )
    .await
    {
        Ok(rows) => {
            for r in rows {
                let name = ident(text(&r[0]));
                let value = match &r[1] {
                    None => "NULL".to_owned(),
                    Some(v) if is_numeric_type(text(&r[2])) => {
                        numeric_literal(v).unwrap_or_else(|| quote(v))
                    }
                    Some(v) => {
                        let cs = String::from_utf8_lossy(text(&r[3])).to_string();
                        if cs.is_empty() || cs == "binary" {
                            format!("X'{}'", hex(v))
                        } else {
                            format!("CONVERT(X'{}' USING {})", hex(v), cs)
                        }
                    }
                };
                user_vars.push(format!("@{name} = {value}"));
            }
            if !user_vars.is_empty() {
                out.push(format!("SET {}", user_vars.join(", ")));
            }
        }
        Err(SqlError::Server(e)) => {
            gaps = Some(format!("user variables could not be read: {e}"));
        }
        Err(e) => return Err(e),
    }
    Ok((out, gaps))
}

/// Why the state could not be replayed on the new connection. The SQL text is never shown
/// whole (it may hold a secret a user variable carries): a statement is named by its digest,
/// a prepared statement by its id or name.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replaying `{digest}` failed: {source}")]
    Statement {
        digest: String,
        #[source]
        source: SqlError,
    },
    #[error("re-preparing statement {id} failed: {source}")]
    Prepare {
        id: u32,
        #[source]
        source: SqlError,
    },
    #[error("re-preparing SQL statement {name} failed: {source}")]
    SqlPrepare {
        name: String,
        #[source]
        source: SqlError,
    },
}

/// Replays state on the new connection: `statements` first (read live, or the tracked
/// settings when the old backend is gone), then binary prepared statements, then SQL
/// PREPAREs. Returns each binary statement's client id with the id the new backend gave it.
pub async fn replay(
    new: &mut PacketConn,
    statements: &[String],
    tracked: &Tracked,
    deprecate_eof: bool,
) -> Result<Vec<(u32, u32)>, ReplayError> {
    for s in statements {
        super::sql::exec(new, s, deprecate_eof)
            .await
            .map_err(|source| ReplayError::Statement {
                digest: crate::proxy::digest::digest(s.as_bytes()),
                source,
            })?;
    }
    let ids = recreate_prepared(new, tracked, deprecate_eof).await?;
    for (name, text) in &tracked.sql_prepares {
        let sql = String::from_utf8_lossy(text);
        super::sql::exec(new, &sql, deprecate_eof)
            .await
            .map_err(|source| ReplayError::SqlPrepare {
                name: name.clone(),
                source,
            })?;
    }
    Ok(ids)
}

/// Prepares each tracked statement again. The new backend numbers them its own way (a
/// MariaDB thread taken from the cache goes on counting); the session translates ids.
async fn recreate_prepared(
    new: &mut PacketConn,
    tracked: &Tracked,
    deprecate_eof: bool,
) -> Result<Vec<(u32, u32)>, ReplayError> {
    let mut ids = Vec::with_capacity(tracked.binary.len());
    for (&client_id, text) in &tracked.binary {
        let got =
            prepare(new, text, deprecate_eof)
                .await
                .map_err(|source| ReplayError::Prepare {
                    id: client_id,
                    source,
                })?;
        ids.push((client_id, got));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(numeric_literal(b"-12.5e3").as_deref(), Some("-12.5e3"));
        assert_eq!(numeric_literal(b"1; DROP"), None);
        assert!(is_numeric_type(b"bigint unsigned"));
        assert!(!is_numeric_type(b"VARCHAR"));
        assert_eq!(hex(b"\x01\xff"), "01FF");
    }
}
