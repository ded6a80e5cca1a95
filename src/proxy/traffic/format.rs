//! The traffic file format (ours, documented in docs/traffic.md): a `meta` JSON file and one
//! or more `traffic-N.log` files (`.log.gz` when compressed) of length-prefixed records, in
//! the order the capture saw them.

use super::cipher::{CtrReader, CtrWriter, Key};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// First bytes of every traffic file: the format and its version.
pub const MAGIC: &[u8; 8] = b"TPXTRF01";
/// `Version` in the meta file; replay refuses any other (Go TiProxy's files among them).
pub const VERSION: &str = "tiproxy-rs/1";
pub const META_FILE: &str = "meta";
/// A file is closed and the next one begun after this many record bytes.
pub const FILE_LIMIT: u64 = 256 << 20;
/// Largest record body accepted when reading: a whole command packet and its header.
pub const MAX_BODY: usize = (1 << 24) + 64;

const KIND_SESSION: u8 = 1;
const KIND_COMMAND: u8 = 2;
const KIND_PREPARED: u8 = 3;
/// kind, connection id, time, body length.
const HEAD: usize = 1 + 8 + 8 + 4;

/// One captured event. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The first command of a session seen by the capture is preceded by its state then: the
    /// user it logged in as and the statements that rebuild its settings (`USE db`, `SET ...`).
    Session {
        conn: u64,
        at_ns: u64,
        user: String,
        init: Vec<Vec<u8>>,
    },
    /// A client command packet's payload (its first byte is the command).
    Command {
        conn: u64,
        at_ns: u64,
        payload: Vec<u8>,
    },
    /// Written before the first command the capture sees that names prepared statement `id`:
    /// its text, so replay can prepare it (it may have been prepared before the capture began).
    Prepared {
        conn: u64,
        at_ns: u64,
        id: u32,
        text: Vec<u8>,
    },
}

impl Record {
    pub fn conn(&self) -> u64 {
        match self {
            Record::Session { conn, .. }
            | Record::Command { conn, .. }
            | Record::Prepared { conn, .. } => *conn,
        }
    }

    pub fn at_ns(&self) -> u64 {
        match self {
            Record::Session { at_ns, .. }
            | Record::Command { at_ns, .. }
            | Record::Prepared { at_ns, .. } => *at_ns,
        }
    }

    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, conn, at_ns) = match self {
            Record::Session { conn, at_ns, .. } => (KIND_SESSION, conn, at_ns),
            Record::Command { conn, at_ns, .. } => (KIND_COMMAND, conn, at_ns),
            Record::Prepared { conn, at_ns, .. } => (KIND_PREPARED, conn, at_ns),
        };
        out.push(kind);
        out.extend_from_slice(&conn.to_le_bytes());
        out.extend_from_slice(&at_ns.to_le_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Record::Session { user, init, .. } => {
                let user = &user.as_bytes()[..user.len().min(u16::MAX as usize)];
                out.extend_from_slice(&(user.len() as u16).to_le_bytes());
                out.extend_from_slice(user);
                let init = &init[..init.len().min(u16::MAX as usize)];
                out.extend_from_slice(&(init.len() as u16).to_le_bytes());
                for stmt in init {
                    out.extend_from_slice(&(stmt.len() as u32).to_le_bytes());
                    out.extend_from_slice(stmt);
                }
            }
            Record::Command { payload, .. } => out.extend_from_slice(payload),
            Record::Prepared { id, text, .. } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(text);
            }
        }
        let body = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&body.to_le_bytes());
    }

    fn decode_body(kind: u8, conn: u64, at_ns: u64, body: Vec<u8>) -> io::Result<Record> {
        match kind {
            KIND_COMMAND => Ok(Record::Command {
                conn,
                at_ns,
                payload: body,
            }),
            KIND_SESSION => {
                let mut r = Cursor(&body);
                let user_len = r.u16()? as usize;
                let user = String::from_utf8_lossy(r.take(user_len)?).into_owned();
                let n = r.u16()?;
                let mut init = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let len = r.u32()? as usize;
                    init.push(r.take(len)?.to_vec());
                }
                Ok(Record::Session {
                    conn,
                    at_ns,
                    user,
                    init,
                })
            }
            KIND_PREPARED => {
                let mut r = Cursor(&body);
                let id = r.u32()?;
                Ok(Record::Prepared {
                    conn,
                    at_ns,
                    id,
                    text: r.0.to_vec(),
                })
            }
            k => Err(invalid(format!("unknown record kind {k}"))),
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("a session record is cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// What a capture leaves in `meta` when it ends; the shared keys are named as TiProxy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(rename = "Version")]
    pub version: String,
    /// When the capture began, RFC 3339.
    #[serde(rename = "StartTime")]
    pub start_time: String,
    /// How long it ran, in nanoseconds (as TiProxy's).
    #[serde(rename = "Duration")]
    pub duration_ns: u64,
    /// Commands written.
    #[serde(rename = "Cmds")]
    pub cmds: u64,
    /// Commands left out on purpose: statements carrying passwords or storage URLs, and
    /// packets too large to keep.
    #[serde(rename = "FilteredCmds")]
    pub filtered_cmds: u64,
    /// Commands lost because the writer fell behind (the sessions were not slowed).
    #[serde(rename = "DroppedCmds")]
    pub dropped_cmds: u64,
    #[serde(rename = "Sessions")]
    pub sessions: u64,
    #[serde(rename = "Compress")]
    pub compress: bool,
    /// "" or "aes256-ctr" (`security.encryption-key-path` holds the key).
    #[serde(rename = "EncryptMethod", default)]
    pub encryption_method: String,
    /// The traffic files in the order to read them.
    #[serde(rename = "Files")]
    pub files: Vec<String>,
}

impl Meta {
    pub fn read(dir: &Path) -> io::Result<Meta> {
        let path = dir.join(META_FILE);
        let text = std::fs::read(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })?;
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| {
            invalid(format!(
                "{} is not a meta file written by this proxy's capture: {e}",
                path.display()
            ))
        })?;
        if meta.version != VERSION {
            return Err(invalid(format!(
                "{} has version {:?}; this proxy replays only its own captures ({VERSION})",
                path.display(),
                meta.version
            )));
        }
        Ok(meta)
    }

    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(META_FILE))?;
        f.write_all(&text)?;
        f.sync_all()
    }
}

/// The name of the `n`th traffic file (from 1).
pub fn file_name(n: usize, compress: bool) -> String {
    if compress {
        format!("traffic-{n}.log.gz")
    } else {
        format!("traffic-{n}.log")
    }
}

/// A traffic file as stored: the file's buffer, encrypted or not.
enum Stored {
    Clear(BufWriter<std::fs::File>),
    Aes(Box<CtrWriter<BufWriter<std::fs::File>>>),
}

impl Write for Stored {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stored::Clear(w) => w.write(b),
            Stored::Aes(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stored::Clear(w) => w.flush(),
            Stored::Aes(w) => w.flush(),
        }
    }
}

impl Stored {
    fn into_file(self) -> BufWriter<std::fs::File> {
        match self {
            Stored::Clear(w) => w,
            Stored::Aes(w) => w.into_inner(),
        }
    }
}

/// What records are written to: compressed first, then encrypted, when asked.
enum Sink {
    Plain(Stored),
    Gzip(flate2::write::GzEncoder<Stored>),
}

impl Sink {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(b),
            Sink::Gzip(w) => w.write_all(b),
        }
    }

    fn finish(self) -> io::Result<()> {
        let mut w = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(g) => g.finish()?,
        };
        w.flush()?;
        let file = w.into_file();
        file.get_ref().sync_all()
    }
}

/// Writes records into `dir`, starting a new file past `FILE_LIMIT`.
pub struct Writer {
    dir: PathBuf,
    compress: bool,
    key: Option<Key>,
    sink: Option<Sink>,
    written: u64,
    files: Vec<String>,
    buf: Vec<u8>,
}

impl Writer {
    /// With a `key`, each file is encrypted (after compression) with AES-256-CTR.
    pub fn new(dir: &Path, compress: bool, key: Option<Key>) -> Writer {
        Writer {
            dir: dir.to_owned(),
            compress,
            key,
            sink: None,
            written: 0,
            files: Vec::new(),
            buf: Vec::new(),
        }
    }

    pub fn write(&mut self, r: &Record) -> io::Result<()> {
        if self.sink.is_none() || self.written >= FILE_LIMIT {
            self.rotate()?;
        }
        self.buf.clear();
        r.encode(&mut self.buf);
        self.written += self.buf.len() as u64;
        match &mut self.sink {
            Some(s) => s.write_all(&self.buf),
            None => Err(io::Error::other("no traffic file open")),
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(s) = self.sink.take() {
            s.finish()?;
        }
        let name = file_name(self.files.len() + 1, self.compress);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(&name))?;
        let file = BufWriter::with_capacity(256 << 10, file);
        let w = match &self.key {
            Some(key) => Stored::Aes(Box::new(CtrWriter::new(file, key)?)),
            None => Stored::Clear(file),
        };
        let mut sink = if self.compress {
            Sink::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::fast(),
            ))
        } else {
            Sink::Plain(w)
        };
        sink.write_all(MAGIC)?;
        self.files.push(name);
        self.written = 0;
        self.sink = Some(sink);
        Ok(())
    }

    /// Flushes and closes the last file; returns the files written, in order.
    pub fn finish(mut self) -> io::Result<Vec<String>> {
        if let Some(s) = self.sink.take() {
            s.finish()?;
        }
        Ok(self.files)
    }
}

/// Reads the records of one traffic file in order.
pub struct Reader {
    inner: Box<dyn BufRead + Send>,
    name: String,
}

impl Reader {
    /// `key` decrypts a file the capture encrypted (its meta file says which).
    pub fn open(path: &Path, key: Option<&Key>) -> io::Result<Reader> {
        let file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let name = path.display().to_string();
        let file = BufReader::with_capacity(256 << 10, file);
        let stored: Box<dyn BufRead + Send> = match key {
            Some(key) => Box::new(BufReader::with_capacity(
                256 << 10,
                CtrReader::new(file, key)
                    .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?,
            )),
            None => Box::new(file),
        };
        let inner: Box<dyn BufRead + Send> = if name.ends_with(".gz") {
            Box::new(BufReader::new(flate2::bufread::GzDecoder::new(stored)))
        } else {
            stored
        };
        Reader::from_stream(inner, name)
    }

    pub fn from_stream(mut inner: Box<dyn BufRead + Send>, name: String) -> io::Result<Reader> {
        let mut magic = [0u8; 8];
        inner
            .read_exact(&mut magic)
            .map_err(|e| invalid(format!("{name}: no traffic file header: {e}")))?;
        if &magic != MAGIC {
            return Err(invalid(format!(
                "{name} is not a traffic file written by this proxy"
            )));
        }
        Ok(Reader { inner, name })
    }

    /// The next record; None at a clean end of the file.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.inner.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut head = [0u8; HEAD];
        self.inner
            .read_exact(&mut head)
            .map_err(|e| invalid(format!("{}: a record is cut short: {e}", self.name)))?;
        let kind = head[0];
        let conn = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
        let at_ns = u64::from_le_bytes(head[9..17].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[17..21].try_into().expect("4 bytes")) as usize;
        if len > MAX_BODY {
            return Err(invalid(format!(
                "{}: a record claims {len} bytes, more than any command",
                self.name
            )));
        }
        let mut body = vec![0u8; len];
        self.inner
            .read_exact(&mut body)
            .map_err(|e| invalid(format!("{}: a record is cut short: {e}", self.name)))?;
        Record::decode_body(kind, conn, at_ns, body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Vec<Record> {
        vec![
            Record::Session {
                conn: 7,
                at_ns: 1_700_000_000_000_000_000,
                user: "app".into(),
                init: vec![b"USE `shop`".to_vec(), b"SET NAMES utf8mb4".to_vec()],
            },
            Record::Command {
                conn: 7,
                at_ns: 1_700_000_000_000_000_500,
                payload: b"\x03INSERT INTO t VALUES (1)".to_vec(),
            },
            Record::Command {
                conn: 9,
                at_ns: 1_700_000_000_000_001_000,
                payload: vec![0x0e],
            },
            Record::Prepared {
                conn: 7,
                at_ns: 1_700_000_000_000_002_000,
                id: 3,
                text: b"SELECT ?".to_vec(),
            },
        ]
    }

    fn round_trip(compress: bool, key: Option<[u8; 32]>) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(dir.path(), compress, key.map(Key::from_bytes));
        for r in sample() {
            w.write(&r).unwrap();
        }
        let files = w.finish().unwrap();
        assert_eq!(files, vec![file_name(1, compress)]);
        let mode = std::fs::metadata(dir.path().join(&files[0]))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "captured SQL is the proxy user's only");
        let path = dir.path().join(&files[0]);
        if key.is_some() {
            let stored = std::fs::read(&path).unwrap();
            assert!(
                !stored.windows(8).any(|w| w == b"SELECT ?"),
                "no SQL in clear"
            );
            assert!(
                Reader::open(&path, None).is_err(),
                "an encrypted file does not read without its key"
            );
        }
        let key = key.map(Key::from_bytes);
        let mut r = Reader::open(&path, key.as_ref()).unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec);
        }
        assert_eq!(got, sample());
    }

    #[test]
    fn records_round_trip_plain_gzip_and_encrypted() {
        round_trip(false, None);
        round_trip(true, None);
        round_trip(false, Some([3; 32]));
        round_trip(true, Some([3; 32]));
    }

    #[test]
    fn meta_round_trips_and_foreign_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            version: VERSION.into(),
            start_time: "2026-01-01T00:00:00Z".into(),
            duration_ns: 5_000_000_000,
            cmds: 3,
            filtered_cmds: 1,
            dropped_cmds: 0,
            sessions: 2,
            compress: true,
            encryption_method: "aes256-ctr".into(),
            files: vec![file_name(1, true)],
        };
        meta.write(dir.path()).unwrap();
        assert_eq!(Meta::read(dir.path()).unwrap(), meta);
        std::fs::write(
            dir.path().join(META_FILE),
            br#"{"Version":"v1","Duration":1,"Cmds":1}"#,
        )
        .unwrap();
        assert!(Meta::read(dir.path()).is_err());
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let mut bytes = MAGIC.to_vec();
        sample()[1].encode(&mut bytes);
        bytes.truncate(bytes.len() - 3);
        let mut r = Reader::from_stream(Box::new(io::Cursor::new(bytes)), "t".into()).unwrap();
        assert!(r.next_record().is_err());
        let foreign = Box::new(io::Cursor::new(b"{\"type\":1}\n".to_vec()));
        assert!(Reader::from_stream(foreign, "t".into()).is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[KIND_COMMAND; 17]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = Reader::from_stream(Box::new(io::Cursor::new(huge)), "t".into()).unwrap();
        assert!(r.next_record().is_err());
    }
}
