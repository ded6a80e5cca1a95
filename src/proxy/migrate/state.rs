//! Session state the proxy tracks itself, so a session can be rebuilt on another backend even
//! when its old one is gone: the effective settings (the database and the latest SET of each
//! variable, see `settings`), SQL PREPAREs by name, and binary prepared statements by id with
//! their text.

use super::settings::Settings;
use std::collections::BTreeMap;

/// Longest statement text tracked.
pub const MAX_TRACKED_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Set,
    Use,
    Prepare(String),
    Deallocate(String),
    Other,
}

#[derive(Debug, Default, Clone)]
pub struct Tracked {
    /// The database and session settings, as statements to replay in order.
    pub settings: Settings,
    /// `PREPARE name FROM ...` texts by lower-cased name, in order of preparation.
    pub sql_prepares: Vec<(String, Box<[u8]>)>,
    /// Binary prepared statements: client-visible id -> SQL text.
    pub binary: BTreeMap<u32, Box<[u8]>>,
    /// Why the tracked state may miss something, if it may.
    pub incomplete: Option<&'static str>,
    /// Server-side state that cannot be moved: the session stays while it holds any.
    pub blockers: Blockers,
    /// The session ran something that may have changed its state where only the server sees
    /// it (a stored routine's SET, a view calling a function...). Until then its state is what
    /// its login made plus what is tracked here, so a move need not read it from the server.
    /// Never cleared: a reset does not undo what a CHANGE_USER's new charset set up.
    pub touched: bool,
}

/// Counts of what pins a session to its backend.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Blockers {
    pub temporary_tables: u32,
    pub user_locks: u32,
    pub table_locks: bool,
}

/// Case-insensitive search for an ASCII needle (already lower case).
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay.windows(needle.len()).any(|w| {
            w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

/// Whether some `...lock(` or `...locks(` call appears: one quick pass over the text, so that
/// the usual SELECT (every point select goes through here) pays for nothing more.
fn calls_lock_function(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'(', sql).any(|i| {
        [&b"lock"[..], b"locks"]
            .iter()
            .any(|name| i >= name.len() && sql[i - name.len()..i].eq_ignore_ascii_case(name))
    })
}

impl Tracked {
    /// What pins the session to its backend, if anything.
    pub fn blocker(&self) -> Option<&'static str> {
        let b = &self.blockers;
        if b.temporary_tables > 0 {
            Some("a temporary table")
        } else if b.user_locks > 0 {
            Some("a user-level lock (GET_LOCK)")
        } else if b.table_locks {
            Some("table locks (LOCK TABLES)")
        } else {
            None
        }
    }

    /// Notes blockers a statement takes or releases. Only statements that can name them are
    /// scanned, so the common SELECT/INSERT costs one keyword comparison.
    fn track_blockers(&mut self, sql: &[u8], first: &[u8]) {
        let b = &mut self.blockers;
        if first.eq_ignore_ascii_case(b"CREATE") && contains_ci(sql, b"temporary") {
            b.temporary_tables += 1;
        } else if first.eq_ignore_ascii_case(b"DROP") && contains_ci(sql, b"temporary") {
            b.temporary_tables = b.temporary_tables.saturating_sub(1);
        } else if first.eq_ignore_ascii_case(b"LOCK") {
            b.table_locks = true;
        } else if first.eq_ignore_ascii_case(b"UNLOCK") {
            b.table_locks = false;
        } else if (first.eq_ignore_ascii_case(b"SELECT") || first.eq_ignore_ascii_case(b"DO"))
            && calls_lock_function(sql)
        {
            if contains_ci(sql, b"release_all_locks(") {
                b.user_locks = 0;
            } else if contains_ci(sql, b"release_lock(") {
                b.user_locks = b.user_locks.saturating_sub(1);
            } else if contains_ci(sql, b"get_lock(") {
                b.user_locks += 1;
            }
        }
    }

    /// Records a COM_QUERY that succeeded. `full` is false when only a prefix was captured.
    pub fn after_query(&mut self, sql: &[u8], full: bool) {
        // One scan for the first keyword serves both questions: this runs on every query.
        let (first, rest) = word(sql);
        self.track_blockers(sql, first);
        let kind = classify_words(first, rest);
        if kind == Kind::Other {
            // `SELECT ... INTO @v` and `@v := ...` set user variables the proxy cannot replay:
            // a rebuild must then say so rather than lose them in silence.
            if memchr::memchr(b'@', sql).is_some()
                && (contains_ci(sql, b":=") || contains_ci(sql, b"into @"))
            {
                self.incomplete =
                    Some("a user variable was set outside SET (SELECT ... INTO @v or @v := ...)");
            }
            return;
        }
        if !full || is_multi(sql) {
            self.incomplete =
                Some("a SET, USE or PREPARE statement was too long or part of a multi-statement");
            return;
        }
        match kind {
            Kind::Set | Kind::Use => self.note_setting(sql),
            Kind::Prepare(name) => {
                self.sql_prepares.retain(|(n, _)| *n != name);
                self.sql_prepares.push((name, sql.into()));
            }
            Kind::Deallocate(name) => self.sql_prepares.retain(|(n, _)| *n != name),
            Kind::Other => {}
        }
    }

    /// COM_INIT_DB, or the database named in the handshake or COM_CHANGE_USER.
    pub fn after_init_db(&mut self, db: &[u8]) {
        let stmt = format!("USE {}", super::sql::ident(db));
        self.note_setting(stmt.as_bytes());
    }

    fn note_setting(&mut self, sql: &[u8]) {
        if let Err(why) = self.settings.note(sql) {
            self.incomplete = Some(why);
        }
    }

    pub fn after_prepare(&mut self, id: u32, sql: &[u8], full: bool) {
        if full {
            self.binary.insert(id, sql.into());
        } else {
            self.incomplete = Some("a prepared statement's text was too long to keep");
        }
    }

    pub fn after_close(&mut self, id: u32) {
        self.binary.remove(&id);
    }

    /// COM_CHANGE_USER wipes the server-side session.
    pub fn reset(&mut self) {
        *self = Tracked {
            touched: self.touched,
            ..Tracked::default()
        };
    }

    /// Notes a command about to run. Only a ping and a SELECT of constants (what connection
    /// pools validate idle connections with) leave the session untouched; `statement` is the
    /// whole text of a COM_QUERY, `None` when it was not captured whole.
    pub fn before_command(&mut self, command: u8, statement: Option<&[u8]>) {
        if self.touched {
            return;
        }
        let inert = match command {
            crate::protocol::constants::cmd::PING => true,
            crate::protocol::constants::cmd::QUERY => statement.is_some_and(selects_constants),
            _ => false,
        };
        self.touched = !inert;
    }

    /// COM_RESET_CONNECTION wipes the server-side session but keeps its current database.
    pub fn reset_keeping_database(&mut self) {
        let database = self.settings.database_statement().map(<[u8]>::to_vec);
        self.reset();
        if let Some(db) = database {
            self.note_setting(&db);
        }
    }
}

/// `SELECT` followed by nothing but digits, commas and spaces (`SELECT 1`): it names no table,
/// view, function or variable, so it cannot change the session. Comments are not skipped, since
/// `/*! ... */` would run.
fn selects_constants(sql: &[u8]) -> bool {
    let sql = sql.trim_ascii();
    let sql = sql.strip_suffix(b";").unwrap_or(sql).trim_ascii_end();
    let Some((head, rest)) = sql.split_at_checked(6) else {
        return false;
    };
    head.eq_ignore_ascii_case(b"SELECT")
        && rest.first().is_some_and(u8::is_ascii_whitespace)
        && rest.iter().any(u8::is_ascii_digit)
        && rest
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_whitespace() || *c == b',')
}

/// Skips whitespace and comments; returns the rest.
pub(crate) fn skip_noise(mut s: &[u8]) -> &[u8] {
    loop {
        let t = s.trim_ascii_start();
        if let Some(rest) = t.strip_prefix(b"/*") {
            // keep /*! ... */ executable comments as text: they are rare in SET/USE
            s = match rest.windows(2).position(|w| w == b"*/") {
                Some(p) => &rest[p + 2..],
                None => b"",
            };
        } else if t.starts_with(b"--") || t.starts_with(b"#") {
            s = match t.iter().position(|&c| c == b'\n') {
                Some(p) => &t[p + 1..],
                None => b"",
            };
        } else {
            return t;
        }
    }
}

/// The first word of `s` (after whitespace and comments) and what follows it.
pub(crate) fn word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = skip_noise(s);
    let end = s
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'`' || *c == b'$'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn name_of(w: &[u8]) -> String {
    String::from_utf8_lossy(w)
        .trim_matches('`')
        .to_ascii_lowercase()
}

pub fn classify(sql: &[u8]) -> Kind {
    let (first, rest) = word(sql);
    classify_words(first, rest)
}

/// `classify` for a statement already split after its first keyword.
fn classify_words(first: &[u8], rest: &[u8]) -> Kind {
    if first.eq_ignore_ascii_case(b"SET") {
        let (second, rest2) = word(rest);
        // SET TRANSACTION only affects the next transaction; not session state.
        if second.eq_ignore_ascii_case(b"TRANSACTION") {
            return Kind::Other;
        }
        if second.eq_ignore_ascii_case(b"SESSION") || second.eq_ignore_ascii_case(b"LOCAL") {
            let (third, _) = word(rest2);
            if third.eq_ignore_ascii_case(b"TRANSACTION") {
                return Kind::Set;
            }
        }
        // SET STATEMENT ... FOR runs another statement with one-off settings: replaying it
        // would run that statement again. GLOBAL, PASSWORD and DEFAULT ROLE change the server.
        if ["GLOBAL", "PASSWORD", "STATEMENT", "DEFAULT"]
            .iter()
            .any(|k| second.eq_ignore_ascii_case(k.as_bytes()))
            || contains_ci(rest, b"@@global.")
        {
            return Kind::Other;
        }
        return Kind::Set;
    }
    if first.eq_ignore_ascii_case(b"USE") {
        return Kind::Use;
    }
    if first.eq_ignore_ascii_case(b"PREPARE") {
        let (name, _) = word(rest);
        return Kind::Prepare(name_of(name));
    }
    if first.eq_ignore_ascii_case(b"DEALLOCATE") || first.eq_ignore_ascii_case(b"DROP") {
        let (second, rest2) = word(rest);
        if second.eq_ignore_ascii_case(b"PREPARE") {
            let (name, _) = word(rest2);
            return Kind::Deallocate(name_of(name));
        }
    }
    Kind::Other
}

/// A statement that starts a transaction as the server's parser reads it: `BEGIN [WORK]` alone
/// or `START TRANSACTION ...`. `BEGIN NOT ATOMIC ... END` (MariaDB's anonymous compound
/// statement, maybe after a label) and `XA START` are not.
pub fn is_begin(sql: &[u8]) -> bool {
    let (first, rest) = word(sql);
    if first.eq_ignore_ascii_case(b"START") {
        return word(rest).0.eq_ignore_ascii_case(b"TRANSACTION");
    }
    if !first.eq_ignore_ascii_case(b"BEGIN") {
        return false;
    }
    let (second, after) = word(rest);
    let tail = if second.eq_ignore_ascii_case(b"WORK") {
        after
    } else if second.is_empty() {
        rest
    } else {
        return false;
    };
    skip_noise(tail)
        .iter()
        .all(|&c| c == b';' || c.is_ascii_whitespace())
}

/// True when text follows a `;` outside quotes: a multi-statement.
pub(crate) fn is_multi(sql: &[u8]) -> bool {
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < sql.len() {
        let c = sql[i];
        match quote {
            Some(q) if c == b'\\' && q != b'`' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' || c == b'`' => quote = Some(c),
            None if c == b';' => {
                return sql[i + 1..]
                    .iter()
                    .any(|b| !b.is_ascii_whitespace() && *b != b';');
            }
            None => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a ping and a SELECT of constants keep a session untouched, and nothing makes a
    /// touched session untouched again.
    #[test]
    fn a_session_stays_untouched_only_through_pings_and_constant_selects() {
        use crate::protocol::constants::cmd;
        let mut t = Tracked::default();
        t.before_command(cmd::PING, None);
        for sql in [&b"SELECT 1"[..], b"select 1, 2 ;", b"  SELECT\t1  "] {
            t.before_command(cmd::QUERY, Some(sql));
            assert!(!t.touched, "{}", String::from_utf8_lossy(sql));
        }
        for sql in [
            &b"SELECT f()"[..],
            b"SELECT @a := 1",
            b"SELECT * FROM v",
            b"SELECT 1 /*!99999 , f() */",
            b"SELECT",
            b"SELECT1",
            b"CALL p()",
        ] {
            let mut t = Tracked::default();
            t.before_command(cmd::QUERY, Some(sql));
            assert!(t.touched, "{}", String::from_utf8_lossy(sql));
        }
        let mut t = Tracked::default();
        t.before_command(cmd::QUERY, None);
        assert!(t.touched, "a statement not captured whole");
        let mut t = Tracked::default();
        t.before_command(cmd::STMT_EXECUTE, None);
        t.reset();
        t.before_command(cmd::PING, None);
        assert!(t.touched);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(b"  set sql_mode='ANSI'"), Kind::Set);
        assert_eq!(classify(b"/* c */ SET @x = 1"), Kind::Set);
        assert_eq!(classify(b"SET TRANSACTION READ ONLY"), Kind::Other);
        assert_eq!(
            classify(b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            Kind::Set
        );
        assert_eq!(classify(b"SET GLOBAL max_connections=1"), Kind::Other);
        assert_eq!(classify(b"use test"), Kind::Use);
        assert_eq!(
            classify(b"PREPARE `S1` FROM 'select 1'"),
            Kind::Prepare("s1".into())
        );
        assert_eq!(
            classify(b"deallocate prepare s1"),
            Kind::Deallocate("s1".into())
        );
        assert_eq!(classify(b"DROP PREPARE s1"), Kind::Deallocate("s1".into()));
        assert_eq!(classify(b"DROP TABLE t"), Kind::Other);
        assert_eq!(classify(b"select 1"), Kind::Other);
    }

    #[test]
    fn tracking_keeps_order_and_names() {
        let mut t = Tracked::default();
        t.after_query(b"SET @a = 1", true);
        t.after_init_db(b"test");
        t.after_query(b"PREPARE s FROM 'select 1'", true);
        t.after_query(b"PREPARE s FROM 'select 2'", true);
        t.after_query(b"SELECT 1", true);
        assert_eq!(t.settings.len(), 2);
        assert_eq!(t.settings.statements().nth(1), Some(&b"USE `test`"[..]));
        assert_eq!(t.sql_prepares.len(), 1);
        assert_eq!(&*t.sql_prepares[0].1, b"PREPARE s FROM 'select 2'");
        t.after_query(b"DEALLOCATE PREPARE s", true);
        assert!(t.sql_prepares.is_empty());
        assert!(t.incomplete.is_none());
        t.after_query(b"SET @b = 1; DELETE FROM t", true);
        assert!(t.incomplete.is_some(), "multi-statements are not replayed");
        assert_eq!(t.settings.len(), 2);
        assert!(!is_multi(b"SET @x = 'a;b';"));
    }

    #[test]
    fn user_variables_set_outside_set_make_the_state_incomplete() {
        let mut t = Tracked::default();
        t.after_query(b"SELECT * FROM t WHERE mail = 'a@b' AND x = 1", true);
        assert!(t.incomplete.is_none());
        t.after_query(b"SELECT COUNT(*) INTO @n FROM t", true);
        assert!(t.incomplete.is_some());
        let mut t = Tracked::default();
        t.after_query(b"SELECT @r := @r + 1 FROM t", true);
        assert!(t.incomplete.is_some());
    }

    #[test]
    fn begin_statements() {
        assert!(is_begin(b"begin"));
        assert!(is_begin(b" START  transaction READ ONLY"));
        assert!(!is_begin(b"START SLAVE"));
        assert!(!is_begin(b"SELECT 'begin'"));
        assert!(is_begin(b"BEGIN WORK"));
        assert!(is_begin(b"/* app */ begin ; "));
        assert!(is_begin(b"BEGIN -- open it\n"));
        assert!(!is_begin(b"BEGIN NOT ATOMIC SELECT 1; END"));
        assert!(!is_begin(b"begin not atomic declare v int; select v; end"));
        assert!(!is_begin(b"lbl: BEGIN NOT ATOMIC END"));
        assert!(!is_begin(b"XA START 'x'"));
    }

    #[test]
    fn blockers_come_and_go() {
        let mut t = Tracked::default();
        t.after_query(b"CREATE TEMPORARY TABLE t (a INT)", true);
        assert_eq!(t.blocker(), Some("a temporary table"));
        t.after_query(b"DROP TEMPORARY TABLE t", true);
        assert_eq!(t.blocker(), None);
        t.after_query(b"SELECT GET_LOCK('x', 1)", true);
        assert!(t.blocker().is_some());
        t.after_query(b"select release_lock('x')", true);
        assert_eq!(t.blocker(), None);
        t.after_query(b"LOCK TABLES t READ", true);
        assert!(t.blocker().is_some());
        t.after_query(b"UNLOCK TABLES", true);
        assert_eq!(t.blocker(), None);
        t.after_query(b"DO get_lock('a', 0), GET_LOCK('b', 0)", true);
        assert!(t.blocker().is_some());
        t.after_query(b"SELECT RELEASE_ALL_LOCKS()", true);
        assert_eq!(t.blocker(), None);
        t.after_query(b"SELECT c FROM sbtest1 WHERE id = 7 AND k IN (1, 2)", true);
        assert_eq!(t.blocker(), None, "a plain SELECT changes nothing");
    }

    #[test]
    fn lock_calls_are_found_only_before_a_parenthesis() {
        assert!(calls_lock_function(b"select get_lock('x',1)"));
        assert!(calls_lock_function(b"SELECT RELEASE_ALL_LOCKS()"));
        assert!(!calls_lock_function(b"SELECT locked FROM t WHERE a IN (1)"));
        assert!(!calls_lock_function(b"SELECT 'lock'"));
        assert!(!calls_lock_function(b"(lock"));
    }
}
