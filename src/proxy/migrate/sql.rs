//! Statements the proxy runs itself on a backend connection (reading session state,
//! replaying it): send one COM_QUERY or COM_STMT_PREPARE and read the whole answer.

use crate::protocol::buf::Reader;
use crate::protocol::constants::{cmd, status, EOF_HEADER, ERR_HEADER, OK_HEADER};
use crate::protocol::response::{is_terminator, ok_status, terminator_status, ErrPacket};
use crate::protocol::PacketConn;
use std::io;

/// Answers to internal statements are small; this bounds a misbehaving backend.
const PACKET_LIMIT: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Server(ErrPacket),
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

pub type Row = Vec<Option<Vec<u8>>>;

/// Runs `sql` and returns the rows of its (single) result set; statements without one give
/// no rows.
pub async fn query(
    conn: &mut PacketConn,
    sql: &str,
    deprecate_eof: bool,
) -> Result<Vec<Row>, SqlError> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(cmd::QUERY);
    payload.extend_from_slice(sql.as_bytes());
    conn.write_packet(0, &payload).await?;
    let mut rows = Vec::new();
    loop {
        let (_, first) = conn.read_packet(PACKET_LIMIT).await?;
        let more = match first.first() {
            Some(&OK_HEADER) => ok_status(&first).unwrap_or(0),
            Some(&ERR_HEADER) => return Err(server_error(&first)),
            Some(_) => read_result_set(conn, &first, deprecate_eof, &mut rows).await?,
            None => return Err(SqlError::Protocol("empty packet".into())),
        };
        if more & status::MORE_RESULTS_EXISTS == 0 {
            return Ok(rows);
        }
    }
}

fn server_error(p: &[u8]) -> SqlError {
    SqlError::Server(ErrPacket::parse(p).unwrap_or_else(|| ErrPacket::new(0, "HY000", "?")))
}

async fn read_result_set(
    conn: &mut PacketConn,
    first: &[u8],
    deprecate_eof: bool,
    rows: &mut Vec<Row>,
) -> Result<u16, SqlError> {
    let columns = Reader::new(first)
        .lenenc_int()
        .ok()
        .flatten()
        .ok_or_else(|| SqlError::Protocol("bad column count".into()))? as usize;
    for _ in 0..columns {
        conn.read_packet(PACKET_LIMIT).await?;
    }
    if !deprecate_eof {
        conn.read_packet(PACKET_LIMIT).await?;
    }
    loop {
        let (_, p) = conn.read_packet(PACKET_LIMIT).await?;
        match p.first() {
            Some(&ERR_HEADER) => return Err(server_error(&p)),
            Some(&h) if h == EOF_HEADER && is_terminator(h, p.len(), deprecate_eof) => {
                return Ok(terminator_status(&p, deprecate_eof).unwrap_or(0));
            }
            _ => rows.push(parse_text_row(&p, columns)?),
        }
    }
}

fn parse_text_row(p: &[u8], columns: usize) -> Result<Row, SqlError> {
    let mut r = Reader::new(p);
    let mut row = Vec::with_capacity(columns);
    for _ in 0..columns {
        if r.remaining() > 0 && p[r.pos()] == 0xfb {
            r.u8().ok();
            row.push(None);
        } else {
            let v = r
                .lenenc_bytes()
                .map_err(|e| SqlError::Protocol(format!("bad row: {e}")))?;
            row.push(Some(v.to_vec()));
        }
    }
    Ok(row)
}

/// Runs a statement and returns the status flags of its final OK.
pub async fn exec_status(
    conn: &mut PacketConn,
    sql: &str,
    deprecate_eof: bool,
) -> Result<u16, SqlError> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(cmd::QUERY);
    payload.extend_from_slice(sql.as_bytes());
    conn.write_packet(0, &payload).await?;
    let (_, p) = conn.read_packet(PACKET_LIMIT).await?;
    match p.first() {
        Some(&OK_HEADER) => Ok(ok_status(&p).unwrap_or(0)),
        Some(&ERR_HEADER) => Err(server_error(&p)),
        _ => {
            let mut rows = Vec::new();
            read_result_set(conn, &p, deprecate_eof, &mut rows).await
        }
    }
}

/// Runs a statement that must succeed without a result set.
pub async fn exec(conn: &mut PacketConn, sql: &str, deprecate_eof: bool) -> Result<(), SqlError> {
    query(conn, sql, deprecate_eof).await.map(|_| ())
}

/// COM_STMT_PREPARE on the proxy's behalf; returns the statement id the backend chose.
pub async fn prepare(
    conn: &mut PacketConn,
    sql: &[u8],
    deprecate_eof: bool,
) -> Result<u32, SqlError> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(cmd::STMT_PREPARE);
    payload.extend_from_slice(sql);
    conn.write_packet(0, &payload).await?;
    let (_, ok) = conn.read_packet(PACKET_LIMIT).await?;
    match ok.first() {
        Some(&ERR_HEADER) => return Err(server_error(&ok)),
        Some(&OK_HEADER) if ok.len() >= 9 => {}
        _ => return Err(SqlError::Protocol("bad prepare answer".into())),
    }
    let id = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
    let cols = usize::from(u16::from_le_bytes([ok[5], ok[6]]));
    let params = usize::from(u16::from_le_bytes([ok[7], ok[8]]));
    let mut n = cols + params;
    if !deprecate_eof {
        n += usize::from(cols > 0) + usize::from(params > 0);
    }
    for _ in 0..n {
        conn.read_packet(PACKET_LIMIT).await?;
    }
    Ok(id)
}

/// COM_STMT_CLOSE (no answer).
pub async fn close_statement(conn: &mut PacketConn, id: u32) -> Result<(), SqlError> {
    let mut payload = vec![cmd::STMT_CLOSE];
    payload.extend_from_slice(&id.to_le_bytes());
    conn.write_packet(0, &payload).await?;
    Ok(())
}

/// A string literal for SQL text: single-quoted, with quotes and backslashes escaped.
pub fn quote(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for ch in String::from_utf8_lossy(v).chars() {
        match ch {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            '\0' => s.push_str("\\0"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// An identifier in backquotes.
pub fn ident(v: &[u8]) -> String {
    format!("`{}`", String::from_utf8_lossy(v).replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote(b"it's a\\b"), "'it''s a\\\\b'");
        assert_eq!(ident(b"we`ird"), "`we``ird`");
    }

    #[test]
    fn text_rows_with_nulls() {
        let p = [1, b'a', 0xfb, 2, b'b', b'c'];
        let row = parse_text_row(&p, 3).unwrap();
        assert_eq!(row, vec![Some(b"a".to_vec()), None, Some(b"bc".to_vec())]);
        assert!(parse_text_row(&[5, b'a'], 1).is_err());
    }
}
