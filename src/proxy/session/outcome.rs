//! What is proven about a command when its backend fails under it: the transaction was rolled
//! back, the command never reached the server, or its outcome is unknown. Pure logic over the
//! session's status flags and the command, so every boundary is unit-tested.

use crate::protocol::constants::{cmd, status};
use crate::proxy::migrate::state::{is_multi, word};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Nothing of the open transaction was committed: the server rolls it back when the
    /// connection ends, and the failed command could not have committed it.
    RolledBack,
    /// The command never reached the server and no transaction was open.
    NotExecuted,
    /// The command reached the server (or may have) and its answer was lost.
    Unknown,
}

/// The command that was in flight, as far as the proxy knows it.
pub(crate) struct InFlight<'a> {
    pub command: u8,
    /// SQL text: the query's (maybe a prefix), or the prepared statement's for an execute.
    pub text: Option<&'a [u8]>,
    /// Whether `text` is the whole statement.
    pub whole: bool,
    /// Whether the client may send several statements in one query.
    pub multi_statements: bool,
}

/// `status` is the session's status flags before the command; `sent` whether the command was
/// written to the backend whole (a packet cut short is never executed by a server).
pub(crate) fn fate(status: u16, sent: bool, cmd: &InFlight) -> Fate {
    let in_txn = status & status::IN_TRANS != 0;
    // With autocommit off every statement joins a transaction that only COMMIT ends.
    let uncommitted = in_txn || status & status::AUTOCOMMIT == 0;
    if !sent {
        return if in_txn {
            Fate::RolledBack
        } else {
            Fate::NotExecuted
        };
    }
    if uncommitted && cannot_commit(cmd) {
        Fate::RolledBack
    } else {
        Fate::Unknown
    }
}

/// True only for commands that can neither commit nor implicitly commit a transaction.
fn cannot_commit(c: &InFlight) -> bool {
    match c.command {
        cmd::QUERY => match c.text {
            Some(sql) => {
                let may_hold_more = c.multi_statements && (!c.whole || is_multi(sql));
                !may_hold_more && statement_cannot_commit(sql)
            }
            None => false,
        },
        cmd::STMT_EXECUTE | cmd::STMT_BULK_EXECUTE => c.text.is_some_and(statement_cannot_commit),
        cmd::STMT_FETCH
        | cmd::STMT_PREPARE
        | cmd::STMT_RESET
        | cmd::STMT_CLOSE
        | cmd::STMT_SEND_LONG_DATA
        | cmd::PING
        | cmd::INIT_DB
        | cmd::FIELD_LIST
        | cmd::STATISTICS
        | cmd::PROCESS_INFO
        | cmd::SET_OPTION
        | cmd::DEBUG
        // Resetting the connection rolls the transaction back itself.
        | cmd::RESET_CONNECTION => true,
        _ => false,
    }
}

/// Statements that never end a transaction. Everything else (COMMIT, BEGIN, DDL, LOCK TABLES,
/// SET autocommit, CALL, XA, anything unrecognised) may commit.
pub(crate) fn statement_cannot_commit(sql: &[u8]) -> bool {
    let (first, rest) = word(sql);
    const DML: &[&[u8]] = &[
        b"SELECT",
        b"INSERT",
        b"UPDATE",
        b"DELETE",
        b"REPLACE",
        b"WITH",
        b"VALUES",
        b"TABLE",
        b"DO",
        b"SHOW",
        b"DESC",
        b"DESCRIBE",
        b"EXPLAIN",
        b"SAVEPOINT",
        b"RELEASE",
        b"ROLLBACK",
        b"HANDLER",
    ];
    if DML.iter().any(|k| first.eq_ignore_ascii_case(k)) {
        // ROLLBACK ... RELEASE ends the connection, still without committing anything.
        return true;
    }
    if first.eq_ignore_ascii_case(b"SET") {
        let (second, _) = word(rest);
        // SET STATEMENT ... FOR runs another statement; SET autocommit = 1 commits.
        return !second.eq_ignore_ascii_case(b"STATEMENT")
            && !contains_ci(sql, b"autocommit")
            && !contains_ci(sql, b"@@global");
    }
    false
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_TXN: u16 = status::IN_TRANS | status::AUTOCOMMIT;
    const AUTO: u16 = status::AUTOCOMMIT;

    fn query(sql: &str) -> InFlight<'_> {
        InFlight {
            command: cmd::QUERY,
            text: Some(sql.as_bytes()),
            whole: true,
            multi_statements: false,
        }
    }

    #[test]
    fn a_lost_commit_is_never_called_rolled_back() {
        for sql in [
            "COMMIT",
            "commit work",
            "/* x */ COMMIT",
            "BEGIN",
            "START TRANSACTION",
        ] {
            assert_eq!(fate(IN_TXN, true, &query(sql)), Fate::Unknown, "{sql}");
        }
        for sql in [
            "CREATE TABLE t (a INT)",
            "ALTER TABLE t ADD b INT",
            "LOCK TABLES t WRITE",
            "SET autocommit = 1",
            "SET @@autocommit = 1, @x = 2",
            "CALL p()",
            "XA END 'x'",
            "SET STATEMENT max_statement_time = 1 FOR COMMIT",
        ] {
            assert_eq!(
                fate(IN_TXN, true, &query(sql)),
                Fate::Unknown,
                "{sql} may commit implicitly"
            );
        }
    }

    #[test]
    fn a_statement_before_commit_in_a_transaction_is_rolled_back() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "update t set a = 2",
            "SELECT * FROM t FOR UPDATE",
            "SAVEPOINT a",
            "ROLLBACK",
            "ROLLBACK TO SAVEPOINT a",
            "SET @x = 1",
        ] {
            assert_eq!(fate(IN_TXN, true, &query(sql)), Fate::RolledBack, "{sql}");
        }
        // autocommit off: the write opens a transaction only COMMIT ends
        assert_eq!(
            fate(0, true, &query("INSERT INTO t VALUES (1)")),
            Fate::RolledBack
        );
    }

    #[test]
    fn an_autocommit_write_whose_answer_was_lost_is_unknown() {
        assert_eq!(
            fate(AUTO, true, &query("INSERT INTO t VALUES (1)")),
            Fate::Unknown
        );
        assert_eq!(fate(AUTO, true, &query("SELECT 1")), Fate::Unknown);
    }

    #[test]
    fn a_command_never_sent_is_not_executed_or_rolls_back_its_transaction() {
        assert_eq!(fate(AUTO, false, &query("COMMIT")), Fate::NotExecuted);
        assert_eq!(fate(IN_TXN, false, &query("COMMIT")), Fate::RolledBack);
        assert_eq!(
            fate(0, false, &query("INSERT INTO t VALUES (1)")),
            Fate::NotExecuted
        );
    }

    #[test]
    fn multi_statements_and_prefixes_are_judged_whole_or_not_at_all() {
        let mut q = query("INSERT INTO t VALUES (1); COMMIT");
        q.multi_statements = true;
        assert_eq!(fate(IN_TXN, true, &q), Fate::Unknown);
        let mut q = query("INSERT INTO t VALUES (1), (2)");
        q.multi_statements = true;
        q.whole = false;
        assert_eq!(
            fate(IN_TXN, true, &q),
            Fate::Unknown,
            "the rest may hold a COMMIT"
        );
        q.multi_statements = false;
        assert_eq!(fate(IN_TXN, true, &q), Fate::RolledBack);
    }

    #[test]
    fn prepared_statements_are_judged_by_their_text() {
        let exec = |text: Option<&'static [u8]>| InFlight {
            command: cmd::STMT_EXECUTE,
            text,
            whole: true,
            multi_statements: true,
        };
        assert_eq!(
            fate(IN_TXN, true, &exec(Some(b"INSERT INTO t VALUES (?)"))),
            Fate::RolledBack
        );
        assert_eq!(fate(IN_TXN, true, &exec(Some(b"COMMIT"))), Fate::Unknown);
        assert_eq!(fate(IN_TXN, true, &exec(None)), Fate::Unknown);
        let fetch = InFlight {
            command: cmd::STMT_FETCH,
            text: None,
            whole: true,
            multi_statements: false,
        };
        assert_eq!(fate(IN_TXN, true, &fetch), Fate::RolledBack);
    }
}
