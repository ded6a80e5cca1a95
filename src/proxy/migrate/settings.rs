//! The effective session settings of a session, kept as the USE and SET statements that
//! recreate them: a later statement that assigns exactly the same targets from constants
//! replaces the earlier one, so a session that runs 10,000 SETs keeps one statement per
//! variable, not a log. A statement whose value reads other state (`@x`, `@@var`, a function
//! or subquery) is kept with everything before it, in order, so replay computes what the
//! session computed. Past the bounds below the settings are declared incomplete: the session
//! is then never rebuilt from them as if they were whole.

use std::collections::HashMap;

/// Most statements kept (distinct variables, or statements that read other state).
const MAX_ENTRIES: usize = 20_000;
/// Most bytes of statement text kept.
const MAX_BYTES: usize = 4 << 20;

/// The target key of the current database.
const DATABASE: &str = "database";

#[derive(Debug, Default, Clone)]
pub struct Settings {
    next: u64,
    /// Statements in the order they ran, with their sequence numbers (ascending); a replaced
    /// one leaves a hole until holes outnumber statements. A sorted vector rather than a map:
    /// nearly every session holds one statement (its database), and a map's first node would
    /// cost it half a kilobyte for as long as it lives.
    entries: Vec<(u64, Option<Entry>)>,
    /// Live statements in `entries`.
    live: usize,
    /// The newest statement for each set of targets but the database.
    latest: HashMap<Box<str>, u64>,
    /// The newest statement that chose the database: kept apart, so a session whose only
    /// setting is its database allocates no map for it.
    database: Option<u64>,
    /// The newest statement that reads state: nothing at or before it may be dropped.
    barrier: Option<u64>,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    text: Box<[u8]>,
    is_database: bool,
}

/// What a USE or SET statement assigns and whether its values depend on other state.
#[derive(Debug, PartialEq, Eq)]
struct Assigns {
    /// Sorted target names joined by commas; `None` when they could not be told.
    key: Option<String>,
    reads_state: bool,
}

impl Settings {
    /// Records a USE or SET statement that succeeded. Errs once the bounds are passed.
    pub fn note(&mut self, sql: &[u8]) -> Result<(), &'static str> {
        let a = assigns(sql);
        let seq = self.next;
        self.next += 1;
        let is_database = a.key.as_deref() == Some(DATABASE);
        if let Some(key) = &a.key {
            let old = if is_database {
                self.database.replace(seq)
            } else {
                self.latest.insert(key.as_str().into(), seq)
            };
            if let Some(old) = old {
                if !a.reads_state && self.barrier.is_none_or(|b| old > b) {
                    self.remove(old);
                }
            }
        }
        if a.reads_state {
            self.barrier = Some(seq);
        }
        if self.live >= MAX_ENTRIES || self.bytes + sql.len() > MAX_BYTES {
            return Err("more distinct session settings than the proxy keeps");
        }
        self.bytes += sql.len();
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        self.entries.push((
            seq,
            Some(Entry {
                text: sql.into(),
                is_database,
            }),
        ));
        self.live += 1;
        Ok(())
    }

    fn get(&self, seq: u64) -> Option<&Entry> {
        let at = self.entries.binary_search_by_key(&seq, |e| e.0).ok()?;
        self.entries[at].1.as_ref()
    }

    fn remove(&mut self, seq: u64) {
        let Ok(at) = self.entries.binary_search_by_key(&seq, |e| e.0) else {
            return;
        };
        if let Some(e) = self.entries[at].1.take() {
            self.bytes -= e.text.len();
            self.live -= 1;
        }
        // Holes go once they outnumber the statements: each removal stays O(log n) amortised.
        if self.entries.len() > 2 * self.live + 8 {
            self.entries.retain(|e| e.1.is_some());
        }
    }

    /// The statements that recreate the settings, in order.
    pub fn statements(&self) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .filter_map(|(_, e)| e.as_ref().map(|e| &*e.text))
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The statement that chose the current database, if one was seen.
    pub fn database_statement(&self) -> Option<&[u8]> {
        self.get(self.database?)
            .filter(|e| e.is_database)
            .map(|e| &*e.text)
    }
}

/// Splits at commas outside quotes and parentheses.
fn split_top_level(s: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start, mut i) = (0i32, None::<u8>, 0, 0);
    while i < s.len() {
        let c = s[i];
        match quote {
            Some(q) if c == b'\\' && q != b'`' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' | b'`' => quote = Some(c),
                b'(' => depth += 1,
                b')' => depth -= 1,
                b',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// Whether a value expression reads anything but constants: a variable, a function call or a
/// subquery (outside quoted strings).
fn reads_state(value: &[u8]) -> bool {
    let mut quote = None::<u8>;
    let mut i = 0;
    while i < value.len() {
        let c = value[i];
        match quote {
            Some(q) if c == b'\\' && q != b'`' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b'@' || c == b'(' => return true,
            None => {}
        }
        i += 1;
    }
    false
}

/// The variable an assignment target names, without scope: `@@session.sql_mode`,
/// `SESSION sql_mode` and `sql_mode` are the same; `@x` is a user variable.
fn target_name(lhs: &[u8]) -> String {
    let mut t: String = String::from_utf8_lossy(lhs)
        .to_ascii_lowercase()
        .chars()
        .filter(|c| *c != '`')
        .collect();
    t = t.trim().to_owned();
    for prefix in ["session ", "local "] {
        if let Some(r) = t.strip_prefix(prefix) {
            t = r.trim().to_owned();
        }
    }
    for prefix in ["@@session.", "@@local.", "@@"] {
        if let Some(r) = t.strip_prefix(prefix) {
            t = r.to_owned();
            break;
        }
    }
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unknown() -> Assigns {
    Assigns {
        key: None,
        reads_state: true,
    }
}

fn assigns(sql: &[u8]) -> Assigns {
    use super::state::word;
    let (first, rest) = word(sql);
    if first.eq_ignore_ascii_case(b"USE") {
        return Assigns {
            key: Some(DATABASE.into()),
            reads_state: false,
        };
    }
    if !first.eq_ignore_ascii_case(b"SET") {
        return unknown();
    }
    let body = rest.trim_ascii();
    let body = body.strip_suffix(b";").unwrap_or(body);
    let (second, after) = word(body);
    let key_of = |k: &str| Assigns {
        key: Some(k.into()),
        reads_state: reads_state(after),
    };
    // NAMES and CHARACTER SET both assign the client, connection and results character sets.
    if second.eq_ignore_ascii_case(b"NAMES") || second.eq_ignore_ascii_case(b"CHARSET") {
        return key_of("names");
    }
    if second.eq_ignore_ascii_case(b"CHARACTER") && word(after).0.eq_ignore_ascii_case(b"SET") {
        return key_of("names");
    }
    if second.eq_ignore_ascii_case(b"ROLE") {
        return key_of("role");
    }
    let (third, _) = word(after);
    if (second.eq_ignore_ascii_case(b"SESSION") || second.eq_ignore_ascii_case(b"LOCAL"))
        && third.eq_ignore_ascii_case(b"TRANSACTION")
    {
        let upper = String::from_utf8_lossy(after).to_ascii_uppercase();
        return match (
            upper.contains("ISOLATION"),
            upper.contains("READ ONLY") || upper.contains("READ WRITE"),
        ) {
            (true, false) => key_of("transaction isolation"),
            (false, true) => key_of("transaction access"),
            _ => unknown(),
        };
    }
    let mut names = Vec::new();
    let mut reads = false;
    for part in split_top_level(body) {
        let Some(eq) = part.iter().position(|&c| c == b'=') else {
            return unknown();
        };
        let lhs = part[..eq].strip_suffix(b":").unwrap_or(&part[..eq]);
        let name = target_name(lhs);
        if name.is_empty() || name.contains(['(', '\'', '"', ' ']) && !name.starts_with('@') {
            return unknown();
        }
        reads |= reads_state(&part[eq + 1..]);
        names.push(name);
    }
    names.sort_unstable();
    names.dedup();
    Assigns {
        key: Some(names.join(",")),
        reads_state: reads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &Settings) -> Vec<String> {
        s.statements()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    #[test]
    fn targets_are_named_without_scope() {
        for sql in [
            "SET sql_mode = 'ANSI'",
            "set @@session.sql_mode='ANSI'",
            "SET SESSION sql_mode = 'ANSI'",
            "SET @@SQL_MODE = 'ANSI'",
            "SET LOCAL `sql_mode` := 'ANSI'",
        ] {
            let a = assigns(sql.as_bytes());
            assert_eq!(a.key.as_deref(), Some("sql_mode"), "{sql}");
            assert!(!a.reads_state, "{sql}");
        }
        let a = assigns(b"SET @b = 1, time_zone = '+00:00', @a := 'x,y'");
        assert_eq!(a.key.as_deref(), Some("@a,@b,time_zone"));
        assert!(assigns(b"SET @x = @y + 1").reads_state);
        assert!(assigns(b"SET sql_mode = CONCAT(@@sql_mode, ',ANSI')").reads_state);
        assert!(assigns(b"SET @t = NOW()").reads_state);
        assert!(!assigns(b"SET @s = 'it''s @home (really)'").reads_state);
        assert_eq!(assigns(b"SET NAMES utf8mb4").key.as_deref(), Some("names"));
        assert_eq!(
            assigns(b"SET CHARACTER SET latin1").key.as_deref(),
            Some("names")
        );
        assert_eq!(assigns(b"USE `db`").key.as_deref(), Some(DATABASE));
    }

    #[test]
    fn ten_thousand_sets_keep_the_last_value_of_each_variable() {
        let mut s = Settings::default();
        s.note(b"USE `app`").unwrap();
        for i in 0..10_000 {
            s.note(format!("SET sql_mode = 'M{i}'").as_bytes()).unwrap();
            s.note(format!("SET @v{} = {i}", i % 50).as_bytes())
                .unwrap();
            s.note(format!("SET time_zone = '+0{}:00'", i % 10).as_bytes())
                .unwrap();
        }
        let t = texts(&s);
        assert_eq!(t.len(), 1 + 1 + 50 + 1, "{:?}", &t[..5]);
        assert_eq!(
            t[0], "USE `app`",
            "the database stays, however many SETs follow"
        );
        assert!(t.contains(&"SET sql_mode = 'M9999'".to_owned()));
        assert!(t.contains(&"SET time_zone = '+09:00'".to_owned()));
        assert!(t.contains(&"SET @v49 = 9999".to_owned()));
        assert!(t.contains(&"SET @v0 = 9950".to_owned()));
        assert_eq!(s.database_statement(), Some(&b"USE `app`"[..]));
    }

    #[test]
    fn a_statement_that_reads_state_keeps_what_it_read() {
        let mut s = Settings::default();
        s.note(b"SET @a = 1").unwrap();
        s.note(b"SET @b = @a").unwrap();
        s.note(b"SET @a = 2").unwrap();
        assert_eq!(texts(&s), ["SET @a = 1", "SET @b = @a", "SET @a = 2"]);
        // After the reader, @a is replaced as usual.
        s.note(b"SET @a = 3").unwrap();
        assert_eq!(texts(&s), ["SET @a = 1", "SET @b = @a", "SET @a = 3"]);
        // A dependent SET of the same variable is replayed after its base, never alone.
        let mut s = Settings::default();
        s.note(b"SET sql_mode = 'ANSI'").unwrap();
        s.note(b"SET sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
            .unwrap();
        assert_eq!(texts(&s).len(), 2);
    }

    #[test]
    fn past_the_bounds_the_settings_say_so() {
        let mut s = Settings::default();
        let mut failed = None;
        for i in 0..MAX_ENTRIES + 1 {
            if let Err(e) = s.note(format!("SET @v{i} = {i}").as_bytes()) {
                failed = Some((i, e));
                break;
            }
        }
        assert_eq!(failed.map(|f| f.0), Some(MAX_ENTRIES));
    }
}
