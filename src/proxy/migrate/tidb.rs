//! The TiDB way to move a session (TiDB >= 6.5): `SHOW SESSION_STATES` on the old backend
//! gives the state as JSON and a signed token; the new backend accepts the token with the
//! `tidb_session_token` auth plugin, then `SET SESSION_STATES` restores the state.

use super::sql::{query, SqlError};
use crate::protocol::response::ErrPacket;
use crate::protocol::PacketConn;

pub struct SessionStates {
    pub json: Vec<u8>,
    pub token: Vec<u8>,
}

pub fn is_tidb(server_version: &str) -> bool {
    server_version.contains("TiDB")
}

/// How a session on a backend with this version moves, as logged (`method`) and counted in
/// `tiproxy_balance_migrate_method_total`: TiDB exports its state (SHOW SESSION_STATES) and a
/// session token; MySQL/MariaDB sessions are rebuilt by replaying statements.
pub const METHOD_SESSION_TOKEN: &str = "session-token";
pub const METHOD_REPLAY: &str = "replay";

pub fn move_method(server_version: &str) -> &'static str {
    if is_tidb(server_version) {
        METHOD_SESSION_TOKEN
    } else {
        METHOD_REPLAY
    }
}

/// Why a TiDB session's state could not be exported for a move.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("TiDB cannot export this session: {0}")]
    Refused(ErrPacket),
    #[error("{0}")]
    Sql(#[source] SqlError),
    #[error("SHOW SESSION_STATES returned no row")]
    NoRow,
    #[error(
        "TiDB returned no session token: set security.session-token-signing-cert/key on every TiDB"
    )]
    NoToken,
}

pub async fn show(old: &mut PacketConn, deprecate_eof: bool) -> Result<SessionStates, ExportError> {
    let rows = query(old, "SHOW SESSION_STATES", deprecate_eof)
        .await
        .map_err(|e| match e {
            SqlError::Server(e) => ExportError::Refused(e),
            other => ExportError::Sql(other),
        })?;
    let row = rows.first().ok_or(ExportError::NoRow)?;
    let json = row.first().cloned().flatten().unwrap_or_default();
    let token = row.get(1).cloned().flatten().unwrap_or_default();
    if token.is_empty() {
        return Err(ExportError::NoToken);
    }
    Ok(SessionStates { json, token })
}

/// `SET SESSION_STATES '<json>'` with `\` and `'` escaped.
pub fn set_statement(json: &[u8]) -> String {
    let text = String::from_utf8_lossy(json);
    let escaped = text.replace('\\', "\\\\").replace('\'', "\\'");
    format!("SET SESSION_STATES '{escaped}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_statement_escapes_quotes_and_backslashes() {
        assert_eq!(
            set_statement(br#"{"a":"it's \"x\""}"#),
            r#"SET SESSION_STATES '{"a":"it\'s \\"x\\""}'"#
        );
        assert!(is_tidb("8.0.11-TiDB-v7.5.0"));
        assert!(!is_tidb("5.5.5-10.11.6-MariaDB"));
    }
}
