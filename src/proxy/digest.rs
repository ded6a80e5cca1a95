//! Statement digests for logs: the SQL text with literal values replaced by `?`, so a
//! statement can be named in a log line without leaking the data in it.

/// Longest digest kept; the rest is cut with "...".
pub const MAX_DIGEST_LEN: usize = 256;

/// Normalizes `sql`: string, number and hex literals become `?`, comments are dropped,
/// runs of whitespace become one space, and keywords keep their case.
pub fn digest(sql: &[u8]) -> String {
    let s = String::from_utf8_lossy(sql);
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().min(MAX_DIGEST_LEN) + 4);
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, piece: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(piece);
    };
    while i < b.len() && out.len() < MAX_DIGEST_LEN {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                space = true;
                i += 1;
            }
            b'\'' | b'"' => {
                i = skip_quoted(b, i, c);
                push(&mut out, "?", &mut space);
            }
            b'`' => {
                let end = skip_quoted(b, i, c);
                push(&mut out, &s[i..end], &mut space);
                i = end;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i),
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(b.len(), |p| i + 2 + p + 2);
                space = true;
            }
            b'0'..=b'9' => {
                let prev_ident = out
                    .as_bytes()
                    .last()
                    .is_some_and(|p| !space && (p.is_ascii_alphanumeric() || *p == b'_'));
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                if prev_ident {
                    // part of an identifier such as t1 or col_2
                    out.push_str(&s[start..i]);
                } else {
                    push(&mut out, "?", &mut space);
                }
            }
            _ => {
                let start = i;
                let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                i += ch_len;
                push(&mut out, &s[start..i], &mut space);
            }
        }
    }
    if i < b.len() {
        out.push_str("...");
    }
    out
}

fn skip_quoted(b: &[u8], start: usize, q: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && q != b'`' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn skip_line(b: &[u8], start: usize) -> usize {
    b[start..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| start + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            digest(b"SELECT * FROM t1 WHERE id = 42 AND name = 'bob''s' OR x=\"y\""),
            "SELECT * FROM t1 WHERE id = ? AND name = ? OR x=?"
        );
        assert_eq!(
            digest(b"insert into t values (1, -2.5e3, 0xff)"),
            "insert into t values (?, -?, ?)"
        );
    }

    #[test]
    fn secrets_in_strings_never_survive() {
        let d = digest(b"SET PASSWORD = PASSWORD('hunter2') /* 'x' */ -- secret\n");
        assert!(!d.contains("hunter2") && !d.contains("secret"), "{d}");
    }

    #[test]
    fn whitespace_collapses_and_identifiers_stay() {
        assert_eq!(
            digest(b"  select\n\n `a b`,col_2  from   t2 "),
            "select `a b`,col_2 from t2"
        );
    }

    #[test]
    fn long_statements_are_cut() {
        let long = format!("select {}", "a,".repeat(500));
        let d = digest(long.as_bytes());
        assert!(d.len() <= MAX_DIGEST_LEN + 3 && d.ends_with("..."));
    }
}
