//! A bare MySQL protocol client over TcpStream for commands mysql_async cannot send.
//!
//! It never asks for CLIENT_DEPRECATE_EOF, so result sets end with classic EOF packets; that
//! also checks that the proxy relays the older framing unchanged.

use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const CLIENT_LONG_PASSWORD: u32 = 0x1;
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub const CLIENT_COMPRESS: u32 = 0x20;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_TRANSACTIONS: u32 = 0x2000;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub const CLIENT_MULTI_STATEMENTS: u32 = 0x1_0000;
pub const CLIENT_MULTI_RESULTS: u32 = 0x2_0000;
pub const CLIENT_PS_MULTI_RESULTS: u32 = 0x4_0000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;

const STATUS_MORE_RESULTS: u16 = 0x0008;
pub const STATUS_CURSOR_EXISTS: u16 = 0x0040;
pub const STATUS_LAST_ROW_SENT: u16 = 0x0080;

/// An ERR packet as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrPacket {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

/// One result of a command: either rows (text, NULL as None) or an OK's counters.
#[derive(Debug, Default, Clone)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub affected_rows: u64,
    pub status: u16,
}

/// What COM_STMT_PREPARE returned.
#[derive(Debug, Clone, Copy)]
pub struct Stmt {
    pub id: u32,
    pub params: u16,
    pub columns: u16,
}

/// A parameter for COM_STMT_EXECUTE.
#[derive(Debug, Clone)]
pub enum Param {
    Int(i64),
    Str(String),
    /// Value already sent with COM_STMT_SEND_LONG_DATA; only its type goes in EXECUTE.
    LongData,
}

pub type Res<T> = Result<T, ErrPacket>;

pub struct RawConn {
    pub stream: TcpStream,
    seq: u8,
    /// Column types of the last binary result, needed to decode fetched rows.
    col_types: Vec<u8>,
    /// AuthSwitchRequests answered during the handshake.
    pub auth_switches: u32,
}

impl RawConn {
    /// TCP only; every read and write gives up after 20 s so a stuck proxy fails the test.
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .expect("write timeout");
        RawConn {
            stream,
            seq: 0,
            col_types: Vec::new(),
            auth_switches: 0,
        }
    }

    /// Over a stream the test connected itself (from a chosen source address, or after
    /// writing a PROXY header); reads and writes give up after 20 s.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .expect("write timeout");
        RawConn {
            stream,
            seq: 0,
            col_types: Vec::new(),
            auth_switches: 0,
        }
    }

    /// Like `connect`, but a refused connection is returned instead of failing the test.
    pub fn try_connect(addr: &str) -> std::io::Result<RawConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(RawConn {
            stream,
            seq: 0,
            col_types: Vec::new(),
            auth_switches: 0,
        })
    }

    /// Connects and logs in with mysql_native_password; the ERR is returned if login fails.
    pub fn login(addr: &str, user: &str, pass: &str, db: Option<&str>) -> Res<RawConn> {
        let mut c = RawConn::connect(addr);
        c.handshake(user, pass, db)?;
        Ok(c)
    }

    pub fn read_packet(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // 16 MiB - 1 payloads continue in the next packet; cap the chain at 64 pieces (1 GiB).
        for _ in 0..64 {
            let mut hdr = [0u8; 4];
            self.stream.read_exact(&mut hdr)?;
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as usize;
            self.seq = hdr[3].wrapping_add(1);
            let start = out.len();
            out.resize(start + len, 0);
            self.stream.read_exact(&mut out[start..])?;
            if len < 0xff_ffff {
                return Ok(out);
            }
        }
        Err(std::io::Error::other("packet longer than 1 GiB"))
    }

    pub fn write_packet(&mut self, payload: &[u8]) {
        let mut chunks = payload.chunks(0xff_ffff).peekable();
        let mut buf = Vec::with_capacity(payload.len() + 8);
        // An exact multiple of 16 MiB - 1 needs an empty trailing packet.
        let needs_empty = payload.len().is_multiple_of(0xff_ffff);
        while let Some(chunk) = chunks.next() {
            let len = chunk.len() as u32;
            buf.extend_from_slice(&len.to_le_bytes()[..3]);
            buf.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            buf.extend_from_slice(chunk);
            if chunks.peek().is_none() && needs_empty {
                buf.extend_from_slice(&[0, 0, 0, self.seq]);
                self.seq = self.seq.wrapping_add(1);
            }
        }
        self.stream.write_all(&buf).expect("write packet");
    }

    /// Writes bytes exactly as given, without framing.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write raw");
    }

    fn command(&mut self, payload: &[u8]) {
        self.seq = 0;
        self.write_packet(payload);
    }

    fn must_read(&mut self) -> Vec<u8> {
        self.read_packet().expect("read packet")
    }

    /// Reads one packet and expects it to be an ERR.
    pub fn read_err(&mut self) -> ErrPacket {
        let p = self.must_read();
        assert_eq!(p.first(), Some(&0xff), "expected ERR packet, got {p:?}");
        parse_err(&p)
    }

    /// Reads the server greeting and answers it; follows an AuthSwitchRequest to
    /// mysql_native_password with the new scramble, as a real client would.
    pub fn handshake(&mut self, user: &str, pass: &str, db: Option<&str>) -> Res<()> {
        self.handshake_with(user, pass, db, 0)
    }

    /// `handshake` asking for `extra_caps` too. With CLIENT_COMPRESS the stream carries
    /// compressed frames once login succeeds, which this client's other methods do not speak.
    pub fn handshake_with(
        &mut self,
        user: &str,
        pass: &str,
        db: Option<&str>,
        extra_caps: u32,
    ) -> Res<()> {
        let greeting = self.must_read();
        if greeting.first() == Some(&0xff) {
            return Err(parse_err(&greeting));
        }
        let scramble = greeting_scramble(&greeting);
        let mut caps = CLIENT_LONG_PASSWORD
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_MULTI_STATEMENTS
            | CLIENT_MULTI_RESULTS
            | CLIENT_PS_MULTI_RESULTS
            | CLIENT_PLUGIN_AUTH
            | extra_caps;
        if db.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        let auth = native_password(pass.as_bytes(), &scramble);
        let mut p = Vec::new();
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(33); // utf8_general_ci
        p.extend_from_slice(&[0u8; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(&auth);
        if let Some(db) = db {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
        p.extend_from_slice(b"mysql_native_password\0");
        self.write_packet(&p);
        // At most one switch and one extra round; anything longer is a protocol bug.
        for _ in 0..3 {
            let r = self.must_read();
            match r.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => return Err(parse_err(&r)),
                Some(0xfe) => {
                    self.auth_switches += 1;
                    let nul = r[1..].iter().position(|&b| b == 0).expect("plugin name") + 1;
                    let plugin = String::from_utf8_lossy(&r[1..nul]).into_owned();
                    let data = &r[nul + 1..];
                    let data = data.strip_suffix(&[0]).unwrap_or(data);
                    // MariaDB switches unknown users to a random plugin (seen: client_ed25519)
                    // so they look like real ones; a dummy 64-byte answer gets its 1045.
                    let reply = if plugin == "mysql_native_password" {
                        native_password(pass.as_bytes(), data)
                    } else {
                        vec![0u8; 64]
                    };
                    self.write_packet(&reply);
                }
                _ => panic!("unexpected packet during auth: {r:?}"),
            }
        }
        panic!("authentication did not finish in 3 rounds");
    }

    /// COM_QUERY; reads every result (multi-statements, procedures) until no more follow.
    pub fn query(&mut self, sql: &str) -> Res<Vec<ResultSet>> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        self.command(&p);
        self.read_results(false)
    }

    /// Convenience: first column of the first row of the first result.
    pub fn query_value(&mut self, sql: &str) -> Option<String> {
        let rs = self.query(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        rs.first()?.rows.first()?.first()?.clone()
    }

    fn read_results(&mut self, binary: bool) -> Res<Vec<ResultSet>> {
        let mut out = Vec::new();
        // Bounded: no test runs more than 1000 statements in one command.
        for _ in 0..1000 {
            let rs = self.read_one_result(binary)?;
            let more = rs.status & STATUS_MORE_RESULTS != 0;
            out.push(rs);
            if !more {
                return Ok(out);
            }
        }
        panic!("more than 1000 results");
    }

    fn read_one_result(&mut self, binary: bool) -> Res<ResultSet> {
        let first = self.must_read();
        match first.first() {
            Some(0x00) => Ok(parse_ok(&first)),
            Some(0xff) => Err(parse_err(&first)),
            Some(0xfb) => panic!("LOCAL INFILE request not supported by the raw client"),
            _ => {
                let mut pos = 0;
                let ncols = lenenc_int(&first, &mut pos) as usize;
                let (columns, types) = self.read_columns(ncols);
                self.col_types = types;
                let eof = self.must_read();
                assert_eq!(eof.first(), Some(&0xfe), "EOF after columns");
                let mut rs = ResultSet {
                    columns,
                    ..Default::default()
                };
                if binary && eof_status(&eof) & STATUS_CURSOR_EXISTS != 0 {
                    // A cursor was opened: rows come only with COM_STMT_FETCH.
                    rs.status = eof_status(&eof);
                    return Ok(rs);
                }
                self.read_rows(&mut rs, binary)?;
                Ok(rs)
            }
        }
    }

    fn read_columns(&mut self, n: usize) -> (Vec<String>, Vec<u8>) {
        let mut names = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for _ in 0..n {
            let c = self.must_read();
            let (name, ty) = parse_column(&c);
            names.push(name);
            types.push(ty);
        }
        (names, types)
    }

    fn read_rows(&mut self, rs: &mut ResultSet, binary: bool) -> Res<()> {
        // Bounded by the largest result a test reads.
        for _ in 0..10_000_000 {
            let p = self.must_read();
            match p.first() {
                Some(0xfe) if p.len() < 9 => {
                    rs.status = eof_status(&p);
                    return Ok(());
                }
                Some(0xff) => return Err(parse_err(&p)),
                _ if binary => rs.rows.push(parse_binary_row(&p, &self.col_types)),
                _ => rs.rows.push(parse_text_row(&p, rs.columns.len())),
            }
        }
        panic!("result set too long");
    }

    /// COM_STMT_PREPARE; reads and drops the parameter and column definitions.
    pub fn prepare(&mut self, sql: &str) -> Res<Stmt> {
        let mut p = vec![0x16];
        p.extend_from_slice(sql.as_bytes());
        self.command(&p);
        let r = self.must_read();
        if r.first() == Some(&0xff) {
            return Err(parse_err(&r));
        }
        let stmt = Stmt {
            id: u32::from_le_bytes(r[1..5].try_into().unwrap()),
            columns: u16::from_le_bytes([r[5], r[6]]),
            params: u16::from_le_bytes([r[7], r[8]]),
        };
        for n in [stmt.params, stmt.columns] {
            if n > 0 {
                self.read_columns(n as usize);
                let eof = self.must_read();
                assert_eq!(eof.first(), Some(&0xfe), "EOF after definitions");
            }
        }
        Ok(stmt)
    }

    /// COM_STMT_EXECUTE; with `cursor` the server opens a read-only cursor and sends no rows.
    pub fn execute(&mut self, stmt: Stmt, params: &[Param], cursor: bool) -> Res<Vec<ResultSet>> {
        assert_eq!(params.len(), stmt.params as usize, "parameter count");
        let mut p = vec![0x17];
        p.extend_from_slice(&stmt.id.to_le_bytes());
        p.push(if cursor { 0x01 } else { 0x00 });
        p.extend_from_slice(&1u32.to_le_bytes());
        if !params.is_empty() {
            p.extend(std::iter::repeat_n(0u8, params.len().div_ceil(8)));
            p.push(1); // new-params-bound: types follow
            for param in params {
                let ty: u8 = match param {
                    Param::Int(_) => 0x08,
                    Param::Str(_) => 0xfd,
                    Param::LongData => 0xfc,
                };
                p.extend_from_slice(&[ty, 0]);
            }
            for param in params {
                match param {
                    Param::Int(v) => p.extend_from_slice(&v.to_le_bytes()),
                    Param::Str(s) => {
                        put_lenenc_int(&mut p, s.len() as u64);
                        p.extend_from_slice(s.as_bytes());
                    }
                    Param::LongData => {}
                }
            }
        }
        self.command(&p);
        self.read_results(true)
    }

    /// COM_STMT_FETCH; returns the rows and whether the cursor is exhausted.
    pub fn fetch(&mut self, stmt: Stmt, rows: u32) -> Res<(Vec<Vec<Option<String>>>, bool)> {
        let mut p = vec![0x1c];
        p.extend_from_slice(&stmt.id.to_le_bytes());
        p.extend_from_slice(&rows.to_le_bytes());
        self.command(&p);
        let mut rs = ResultSet::default();
        self.read_rows(&mut rs, true)?;
        Ok((rs.rows, rs.status & STATUS_LAST_ROW_SENT != 0))
    }

    /// COM_STMT_SEND_LONG_DATA; the server sends no reply.
    pub fn send_long_data(&mut self, stmt: Stmt, param: u16, data: &[u8]) {
        let mut p = vec![0x18];
        p.extend_from_slice(&stmt.id.to_le_bytes());
        p.extend_from_slice(&param.to_le_bytes());
        p.extend_from_slice(data);
        self.command(&p);
    }

    /// COM_STMT_RESET: drops long data and closes the cursor.
    pub fn stmt_reset(&mut self, stmt: Stmt) -> Res<()> {
        let mut p = vec![0x1a];
        p.extend_from_slice(&stmt.id.to_le_bytes());
        self.command(&p);
        self.expect_ok()
    }

    /// COM_STMT_CLOSE; no reply.
    pub fn stmt_close(&mut self, stmt: Stmt) {
        let mut p = vec![0x19];
        p.extend_from_slice(&stmt.id.to_le_bytes());
        self.command(&p);
    }

    /// COM_FIELD_LIST: the column names of `table`.
    pub fn field_list(&mut self, table: &str) -> Res<Vec<String>> {
        let mut p = vec![0x04];
        p.extend_from_slice(table.as_bytes());
        p.push(0);
        self.command(&p);
        let mut names = Vec::new();
        for _ in 0..10_000 {
            let c = self.must_read();
            match c.first() {
                Some(0xff) => return Err(parse_err(&c)),
                Some(0xfe) if c.len() < 9 => return Ok(names),
                _ => names.push(parse_column(&c).0),
            }
        }
        panic!("field list too long");
    }

    /// COM_STATISTICS: a human-readable line ("Uptime: ...").
    pub fn statistics(&mut self) -> String {
        self.command(&[0x09]);
        String::from_utf8_lossy(&self.must_read()).into_owned()
    }

    /// COM_SET_OPTION for CLIENT_MULTI_STATEMENTS; servers answer with EOF (MySQL) or OK.
    pub fn set_multi_statements(&mut self, on: bool) -> Res<()> {
        let opt: u16 = if on { 0 } else { 1 };
        let mut p = vec![0x1b];
        p.extend_from_slice(&opt.to_le_bytes());
        self.command(&p);
        let r = self.must_read();
        match r.first() {
            Some(0x00) | Some(0xfe) => Ok(()),
            Some(0xff) => Err(parse_err(&r)),
            _ => panic!("unexpected reply to COM_SET_OPTION: {r:?}"),
        }
    }

    pub fn reset_connection(&mut self) -> Res<()> {
        self.command(&[0x1f]);
        self.expect_ok()
    }

    pub fn ping(&mut self) -> Res<()> {
        self.command(&[0x0e]);
        self.expect_ok()
    }

    pub fn init_db(&mut self, db: &str) -> Res<()> {
        let mut p = vec![0x02];
        p.extend_from_slice(db.as_bytes());
        self.command(&p);
        self.expect_ok()
    }

    /// COM_QUIT, then true if the other side closed the connection as it should.
    pub fn quit(mut self) -> bool {
        self.command(&[0x01]);
        let mut buf = [0u8; 1];
        matches!(self.stream.read(&mut buf), Ok(0))
    }

    /// Any command byte plus body, answered by one packet.
    pub fn raw_command(&mut self, payload: &[u8]) -> Vec<u8> {
        self.command(payload);
        self.must_read()
    }

    fn expect_ok(&mut self) -> Res<()> {
        let r = self.must_read();
        match r.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => Err(parse_err(&r)),
            _ => panic!("expected OK, got {r:?}"),
        }
    }
}

/// SHA1(pass) XOR SHA1(scramble + SHA1(SHA1(pass))), empty for an empty password.
pub fn native_password(pass: &[u8], scramble: &[u8]) -> Vec<u8> {
    if pass.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(pass);
    let h2 = Sha1::digest(h1);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(h2);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn greeting_scramble(g: &[u8]) -> Vec<u8> {
    assert_eq!(g[0], 10, "protocol version 10 expected: {g:?}");
    let mut pos = 1 + g[1..].iter().position(|&b| b == 0).expect("server version") + 1;
    pos += 4; // connection id
    let mut scramble = g[pos..pos + 8].to_vec();
    pos += 8 + 1 + 2 + 1 + 2 + 2; // filler, caps low, charset, status, caps high
    let auth_len = g[pos] as usize;
    pos += 1 + 10;
    let rest = auth_len.saturating_sub(9).max(12);
    scramble.extend_from_slice(&g[pos..pos + rest]);
    scramble
}

pub fn parse_err(p: &[u8]) -> ErrPacket {
    let code = u16::from_le_bytes([p[1], p[2]]);
    let (sqlstate, msg) = if p.get(3) == Some(&b'#') && p.len() >= 9 {
        (String::from_utf8_lossy(&p[4..9]).into_owned(), &p[9..])
    } else {
        (String::new(), &p[3..])
    };
    ErrPacket {
        code,
        sqlstate,
        message: String::from_utf8_lossy(msg).into_owned(),
    }
}

fn parse_ok(p: &[u8]) -> ResultSet {
    let mut pos = 1;
    let affected_rows = lenenc_int(p, &mut pos);
    let _last_insert_id = lenenc_int(p, &mut pos);
    let status = u16::from_le_bytes([p[pos], p[pos + 1]]);
    ResultSet {
        affected_rows,
        status,
        ..Default::default()
    }
}

fn eof_status(p: &[u8]) -> u16 {
    u16::from_le_bytes([p[3], p[4]])
}

fn parse_column(c: &[u8]) -> (String, u8) {
    let mut pos = 0;
    for _ in 0..4 {
        lenenc_bytes(c, &mut pos); // catalog, schema, table, org_table
    }
    let name = String::from_utf8_lossy(lenenc_bytes(c, &mut pos)).into_owned();
    lenenc_bytes(c, &mut pos); // org_name
    pos += 1 + 2 + 4; // fixed-length marker, charset, column length
    (name, c[pos])
}

fn parse_text_row(p: &[u8], ncols: usize) -> Vec<Option<String>> {
    let mut pos = 0;
    (0..ncols)
        .map(|_| {
            if p[pos] == 0xfb {
                pos += 1;
                None
            } else {
                Some(String::from_utf8_lossy(lenenc_bytes(p, &mut pos)).into_owned())
            }
        })
        .collect()
}

/// Decodes the integer and string types the tests use; other types are shown as raw text.
fn parse_binary_row(p: &[u8], types: &[u8]) -> Vec<Option<String>> {
    let bitmap_len = (types.len() + 7 + 2) / 8;
    let bitmap = &p[1..1 + bitmap_len];
    let mut pos = 1 + bitmap_len;
    types
        .iter()
        .enumerate()
        .map(|(i, &ty)| {
            let bit = i + 2;
            if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
                return None;
            }
            let fixed = |n: usize, pos: &mut usize| {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(&p[*pos..*pos + n]);
                *pos += n;
                i64::from_le_bytes(b).to_string()
            };
            Some(match ty {
                0x01 => fixed(1, &mut pos),
                0x02 | 0x0d => fixed(2, &mut pos),
                0x03 | 0x09 => fixed(4, &mut pos),
                0x08 => fixed(8, &mut pos),
                0x04 => {
                    pos += 4;
                    f32::from_le_bytes(p[pos - 4..pos].try_into().unwrap()).to_string()
                }
                0x05 => {
                    pos += 8;
                    f64::from_le_bytes(p[pos - 8..pos].try_into().unwrap()).to_string()
                }
                0x07 | 0x0a | 0x0b | 0x0c => {
                    let n = p[pos] as usize;
                    pos += 1 + n;
                    format!("<temporal {n} bytes>")
                }
                _ => String::from_utf8_lossy(lenenc_bytes(p, &mut pos)).into_owned(),
            })
        })
        .collect()
}

pub fn lenenc_int(p: &[u8], pos: &mut usize) -> u64 {
    let b = p[*pos];
    *pos += 1;
    let n = match b {
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return b as u64,
    };
    let mut buf = [0u8; 8];
    buf[..n].copy_from_slice(&p[*pos..*pos + n]);
    *pos += n;
    u64::from_le_bytes(buf)
}

fn lenenc_bytes<'a>(p: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let n = lenenc_int(p, pos) as usize;
    let s = &p[*pos..*pos + n];
    *pos += n;
    s
}

pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xfa => out.push(v as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&v.to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}
