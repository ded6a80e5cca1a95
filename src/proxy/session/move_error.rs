//! Why a session did not move to another backend, with the failure that stopped it kept as
//! its source, and what that leaves the session with: its old backend, a broken connection
//! to it, or (that backend gone) nothing, so the session closes.

use super::redirect::StateSource;
use crate::proxy::backend_conn::{AuthError, DialError};
use crate::proxy::migrate::restore::ReplayError;
use crate::proxy::migrate::service::LoginError;
use crate::proxy::migrate::sql::SqlError;
use crate::proxy::migrate::tidb::ExportError;
use std::fmt;

/// A move that did not happen. Shown as `target: why` when a target was chosen, else `why`:
/// the text a rebuilt-or-closed client error, the log and `/api` show.
#[derive(Debug)]
pub(crate) struct MoveError {
    /// The backend it was going to, when one was named or picked.
    pub to: Option<String>,
    /// Where the new session's state was to come from: whether the old backend is alive.
    pub state_from: StateSource,
    pub why: NotMoved,
}

/// What a failed move leaves the session with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// On its backend as before; a later request may move it.
    Stays,
    /// On its backend, whose connection failed while the state was read from it: the next
    /// command finds out and the session is rebuilt from what the proxy tracked, or closed.
    StaysBroken,
    /// Its backend is gone and no other took it: the client is told and the session closes.
    Closed,
}

impl MoveError {
    pub fn new(to: Option<String>, state_from: StateSource, why: NotMoved) -> MoveError {
        MoveError {
            to,
            state_from,
            why,
        }
    }

    pub fn left(&self) -> Left {
        match self.state_from {
            StateSource::Tracked => Left::Closed,
            StateSource::Live if self.why.broke_old_connection() => Left::StaysBroken,
            StateSource::Live => Left::Stays,
        }
    }

    /// The backend it was going to, or "" (the migration metrics' `to` label).
    pub fn to_label(&self) -> &str {
        self.to.as_deref().unwrap_or_default()
    }
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.to {
            Some(to) => write!(f, "{to}: {}", self.why),
            None => write!(f, "{}", self.why),
        }
    }
}

impl std::error::Error for MoveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.why)
    }
}

/// Why the session did not move, without where to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotMoved {
    /// Server-side state that cannot be carried (a temporary table, a lock).
    #[error("the session holds {0}")]
    Pinned(&'static str),
    /// The proxy could not record all of the session's state, so it will not replay a part.
    #[error("its state cannot be restored: {0}")]
    StateIncomplete(&'static str),
    #[error("routing rule {0:?} keeps the session off it")]
    RoutingRule(String),
    /// The target is outside the session's namespace group (named here).
    #[error("{0} keeps the session off it")]
    NamespaceGroup(String),
    #[error("no other healthy backend")]
    NoBackend,
    #[error("no other healthy backend in routing rule {0:?}")]
    NoBackendInRule(String),
    /// The session's TiDB went away while it was idle; its state went with it.
    #[error("its state lived in that TiDB")]
    StateLivedInTidb,
    /// A TiDB session's state is exported by its live TiDB; none is left to ask.
    #[error("a TiDB session cannot be rebuilt once its backend is gone")]
    TidbBackendGone,
    /// SHOW SESSION_STATES on the old TiDB failed.
    #[error("{0}")]
    ExportTidb(#[source] ExportError),
    #[error("{0}")]
    Dial(#[source] DialError),
    #[error("{0}")]
    Auth(#[source] AuthError),
    #[error("SET SESSION_STATES failed: {0}")]
    SetSessionStates(#[source] SqlError),
    /// How to log in as the session's user on the target could not be worked out.
    #[error("{0}")]
    Login(#[source] LoginError),
    /// Part of the live state could not be read (said which): a move never drops state.
    #[error("its state cannot be moved: {0}")]
    StateGaps(String),
    #[error("reading the session state failed: {0}")]
    ReadState(#[source] SqlError),
    #[error("{0}")]
    Replay(#[from] ReplayError),
    #[error("the new backend offers different protocol capabilities")]
    Capabilities,
}

impl NotMoved {
    /// The state was being read from the old backend when its connection failed (not a
    /// refusal by the server, which leaves the connection usable).
    fn broke_old_connection(&self) -> bool {
        match self {
            NotMoved::ReadState(e) | NotMoved::ExportTidb(ExportError::Sql(e)) => {
                !matches!(e, SqlError::Server(_))
            }
            _ => false,
        }
    }

    /// The session's state lived in a TiDB that is gone: nothing can rebuild it, and the
    /// client is told so rather than that it was closed for want of a backend.
    pub fn tidb_state_lost(&self) -> bool {
        matches!(self, NotMoved::StateLivedInTidb | NotMoved::TidbBackendGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::ErrPacket;
    use std::error::Error;
    use std::io;

    fn io_err() -> SqlError {
        SqlError::Io(io::Error::from(io::ErrorKind::ConnectionReset))
    }

    #[test]
    fn a_failed_live_move_leaves_the_session_where_it_was() {
        let cases = [
            NotMoved::Pinned("a temporary table"),
            NotMoved::NoBackend,
            NotMoved::RoutingRule("r1".into()),
            NotMoved::Dial(DialError::Connect(io::Error::from(
                io::ErrorKind::ConnectionRefused,
            ))),
            NotMoved::Capabilities,
            // The old server refused to show its variables: its connection is fine.
            NotMoved::ReadState(SqlError::Server(ErrPacket::new(1109, "42S02", "no table"))),
        ];
        for why in cases {
            let e = MoveError::new(Some("b:1".into()), StateSource::Live, why);
            assert_eq!(e.left(), Left::Stays, "{e}");
        }
    }

    #[test]
    fn a_connection_lost_while_reading_the_state_is_a_broken_stay() {
        for why in [
            NotMoved::ReadState(io_err()),
            NotMoved::ExportTidb(ExportError::Sql(io_err())),
        ] {
            let e = MoveError::new(Some("b:2".into()), StateSource::Live, why);
            assert_eq!(e.left(), Left::StaysBroken, "{e}");
        }
        // The new backend's connection failing says nothing about the old one.
        let replay = ReplayError::Prepare {
            id: 3,
            source: io_err(),
        };
        let e = MoveError::new(Some("b:2".into()), StateSource::Live, replay.into());
        assert_eq!(e.left(), Left::Stays);
    }

    #[test]
    fn a_failed_rebuild_closes_the_session() {
        let e = MoveError::new(None, StateSource::Tracked, NotMoved::NoBackend);
        assert_eq!(e.left(), Left::Closed);
        assert!(!e.why.tidb_state_lost());
        let tidb = MoveError::new(None, StateSource::Tracked, NotMoved::StateLivedInTidb);
        assert_eq!(tidb.left(), Left::Closed);
        assert!(tidb.why.tidb_state_lost());
        assert!(NotMoved::TidbBackendGone.tidb_state_lost());
    }

    #[test]
    fn text_names_the_target_and_keeps_the_cause() {
        let e = MoveError::new(
            None,
            StateSource::Live,
            NotMoved::Pinned("a temporary table"),
        );
        assert_eq!(e.to_string(), "the session holds a temporary table");
        assert_eq!(e.to_label(), "");
        let replay = ReplayError::Statement {
            digest: "SET @`a` = ?".into(),
            source: io_err(),
        };
        let e = MoveError::new(Some("b:3".into()), StateSource::Tracked, replay.into());
        assert!(
            e.to_string()
                .starts_with("b:3: replaying `SET @`a` = ?` failed: "),
            "{e}"
        );
        assert_eq!(e.to_label(), "b:3");
        // MoveError -> NotMoved -> ReplayError -> SqlError -> io::Error.
        let mut depth = 0;
        let mut cur: Option<&dyn Error> = Some(&e);
        while let Some(c) = cur {
            depth += 1;
            cur = c.source();
        }
        assert_eq!(depth, 5);
        let rule = NotMoved::NoBackendInRule("east".into());
        assert_eq!(
            rule.to_string(),
            "no other healthy backend in routing rule \"east\""
        );
    }
}
