//! What the capture leaves out (statements carrying passwords or storage URLs) and what a
//! read-only replay may run, judged from a statement's first keywords as TiProxy does.

use crate::proxy::migrate::state::skip_noise;

/// The first `n` keywords of `sql`, upper-cased; a word ends at anything but a letter, digit,
/// `_` or `@` (so `@@global.x` gives `@@GLOBAL`).
fn keywords(sql: &[u8], n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut rest = sql;
    while out.len() < n {
        rest = skip_noise(rest);
        let end = rest
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'@'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(String::from_utf8_lossy(&rest[..end]).to_ascii_uppercase());
        rest = &rest[end..];
    }
    out
}

/// Statements never written to traffic files: they carry passwords (CREATE/ALTER USER,
/// SET PASSWORD, GRANT) or storage URLs and credentials (BACKUP, RESTORE, IMPORT), or read
/// client files replay cannot have (LOAD DATA).
pub fn is_sensitive(sql: &[u8]) -> bool {
    let k = keywords(sql, 2);
    let w = |i: usize| k.get(i).map(String::as_str).unwrap_or("");
    matches!(
        (w(0), w(1)),
        ("CREATE" | "ALTER", "USER")
            | ("SET", "PASSWORD")
            | ("GRANT" | "BACKUP" | "RESTORE" | "IMPORT", _)
            | ("LOAD", "DATA")
    )
}

/// Whether a read-only replay runs `sql`: reads, and the session and transaction statements
/// they need (a SELECT ... FOR UPDATE takes locks, so it is left out).
pub fn is_read_only(sql: &[u8]) -> bool {
    let k = keywords(sql, 2);
    let w = |i: usize| k.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "SELECT" => !has_for_update(sql),
        "SHOW" | "WITH" | "USE" | "DESC" | "DESCRIBE" | "TABLE" | "DO" | "BEGIN" | "COMMIT"
        | "ROLLBACK" => true,
        "START" => w(1) == "TRANSACTION",
        "SET" => {
            let second = w(1);
            matches!(
                second,
                "SESSION" | "NAMES" | "CHARSET" | "CHARACTER" | "TRANSACTION" | "SESSION_STATES"
            ) || (second.starts_with('@')
                && !second.starts_with("@@GLOBAL")
                && !second.starts_with("@@PERSIST"))
        }
        _ => false,
    }
}

fn has_for_update(sql: &[u8]) -> bool {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&[u8]> = lower
        .split(|c| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .any(|w| w[0] == b"for" && w[1].starts_with(b"update"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_filtered() {
        for s in [
            "CREATE USER u IDENTIFIED BY 'x'",
            " /* c */ alter user u identified by 'y'",
            "SET PASSWORD = 'z'",
            "grant all on *.* to u",
            "BACKUP DATABASE * TO 's3://b?access-key=k'",
            "LOAD DATA LOCAL INFILE 'f' INTO TABLE t",
        ] {
            assert!(is_sensitive(s.as_bytes()), "{s}");
        }
        for s in ["SELECT 1", "CREATE TABLE user (a int)", "SET @x = 1", ""] {
            assert!(!is_sensitive(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn read_only_statements() {
        for s in [
            "select * from t",
            "SHOW TABLES",
            "USE db",
            "begin",
            "START TRANSACTION",
            "SET NAMES utf8mb4",
            "SET @a = 1",
            "SET SESSION sql_mode = ''",
        ] {
            assert!(is_read_only(s.as_bytes()), "{s}");
        }
        for s in [
            "INSERT INTO t VALUES (1)",
            "select * from t for update",
            "SET GLOBAL x = 1",
            "SET @@global.x = 1",
            "UPDATE t SET a = 1",
            "EXPLAIN ANALYZE SELECT 1",
            "START SLAVE",
        ] {
            assert!(!is_read_only(s.as_bytes()), "{s}");
        }
    }
}
