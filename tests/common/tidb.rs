//! A scripted TiDB for the session-migration path no real TiDB can show here: it greets as
//! TiDB, accepts a `tidb_session_token` login with a token it issued, and answers
//! `SHOW SESSION_STATES` / `SET SESSION_STATES` with the JSON state TiDB documents
//! (`current-db`, `user-var-values`). Plain logins use mysql_native_password.
//!
//! Each connection runs on its own thread with read timeouts; the accept loop ends on drop
//! or after a fixed lifetime, and accepts a bounded number of connections.

use super::wire::{accept_loop, Io};
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// LONG_PASSWORD | LONG_FLAG | CONNECT_WITH_DB | PROTOCOL_41 | TRANSACTIONS |
/// SECURE_CONNECTION | MULTI_STATEMENTS | MULTI_RESULTS | PS_MULTI_RESULTS | PLUGIN_AUTH |
/// CONNECT_ATTRS | PLUGIN_AUTH_LENENC_DATA (no DEPRECATE_EOF: classic EOF packets).
const CAPS: u32 = 0x1
    | 0x4
    | 0x8
    | 0x200
    | 0x2000
    | 0x8000
    | 0x1_0000
    | 0x2_0000
    | 0x4_0000
    | 0x8_0000
    | 0x10_0000
    | 0x20_0000;

/// What the scripted TiDB saw.
#[derive(Clone, Debug, PartialEq)]
pub enum TidbEvent {
    Login { plugin: String, accepted: bool },
    Query(String),
}

struct Shared {
    port: u16,
    password: String,
    /// Tokens issued by SHOW SESSION_STATES on any instance sharing this registry.
    tokens: Arc<Mutex<Vec<String>>>,
    events: Mutex<Vec<TidbEvent>>,
    next: AtomicU64,
}

pub struct ScriptedTidb {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ScriptedTidb {
    /// Starts one instance; instances given the same `tokens` accept each other's tokens,
    /// as TiDBs sharing a signing certificate do.
    pub fn start(password: &str, tokens: Arc<Mutex<Vec<String>>>) -> ScriptedTidb {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            port,
            password: password.into(),
            tokens,
            events: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (shared.clone(), stop.clone());
        let accept = std::thread::spawn(move || accept_loop(listener, s2, st2, serve));
        ScriptedTidb {
            shared,
            stop,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    pub fn events(&self) -> Vec<TidbEvent> {
        self.shared.events.lock().expect("events").clone()
    }
}

impl Drop for ScriptedTidb {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn sha1(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().to_vec()
}

fn native(pw: &[u8], scramble: &[u8]) -> Vec<u8> {
    if pw.is_empty() {
        return Vec::new();
    }
    let s1 = sha1(&[pw]);
    let mask = sha1(&[scramble, &sha1(&[&s1])]);
    s1.iter().zip(mask).map(|(a, b)| a ^ b).collect()
}

fn cstr(p: &[u8], pos: &mut usize) -> Vec<u8> {
    let end = p[*pos..]
        .iter()
        .position(|&b| b == 0)
        .map_or(p.len(), |n| *pos + n);
    let s = p[*pos..end].to_vec();
    *pos = (end + 1).min(p.len());
    s
}

/// (auth data, database, plugin) from a HandshakeResponse41.
fn parse_response(p: &[u8]) -> (Vec<u8>, Option<String>, String) {
    let caps = u32::from_le_bytes(p[..4].try_into().expect("caps"));
    let mut pos = 32;
    cstr(p, &mut pos);
    let n = if caps & 0x20_0000 != 0 {
        super::raw::lenenc_int(p, &mut pos) as usize
    } else {
        let n = p[pos] as usize;
        pos += 1;
        n
    };
    let auth = p[pos..pos + n].to_vec();
    pos += n;
    let db = (caps & 0x8 != 0).then(|| String::from_utf8_lossy(&cstr(p, &mut pos)).into_owned());
    let plugin = String::from_utf8_lossy(&cstr(p, &mut pos)).into_owned();
    (auth, db.filter(|d| !d.is_empty()), plugin)
}

fn record(sh: &Shared, e: TidbEvent) {
    sh.events.lock().expect("events").push(e);
}

fn serve(stream: TcpStream, sh: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nonblocking(false)?;
    let mut io = Io::new(stream);
    let scramble: Vec<u8> = (0..20u32)
        .map(|i| 0x21 + ((i * 7 + u32::from(sh.port)) % 90) as u8)
        .collect();
    let mut g = vec![10];
    g.extend_from_slice(b"8.0.11-TiDB-v7.5.0\0");
    g.extend_from_slice(&(sh.next.fetch_add(1, Ordering::Relaxed) as u32).to_le_bytes());
    g.extend_from_slice(&scramble[..8]);
    g.push(0);
    g.extend_from_slice(&(CAPS as u16).to_le_bytes());
    g.push(45);
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((CAPS >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(&scramble[8..]);
    g.push(0);
    g.extend_from_slice(b"mysql_native_password\0");
    io.write(&g)?;
    let resp = match io.read() {
        Ok(r) => r,
        Err(_) => return Ok(()), // a health probe
    };
    let (auth, db, plugin) = parse_response(&resp);
    let accepted = if plugin == "tidb_session_token" {
        let token = String::from_utf8_lossy(&auth).into_owned();
        sh.tokens.lock().expect("tokens").contains(&token)
    } else {
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"mysql_native_password\0");
        switch.extend_from_slice(&scramble);
        switch.push(0);
        io.write(&switch)?;
        let reply = io.read()?;
        reply == native(sh.password.as_bytes(), &scramble)
    };
    record(sh, TidbEvent::Login { plugin, accepted });
    if !accepted {
        let mut err = vec![0xff];
        err.extend_from_slice(&1045u16.to_le_bytes());
        err.extend_from_slice(b"#28000Access denied (scripted TiDB)");
        return io.write(&err);
    }
    io.write(&ok())?;
    let mut state = json!({ "current-db": db.unwrap_or_default(), "user-var-values": {} });
    commands(&mut io, sh, &mut state)
}

fn commands(io: &mut Io, sh: &Shared, state: &mut Value) -> std::io::Result<()> {
    for _ in 0..100_000 {
        let p = io.read()?;
        match p.first() {
            Some(0x01) | None => return Ok(()),
            Some(0x02) => {
                state["current-db"] = json!(String::from_utf8_lossy(&p[1..]));
                io.write(&ok())?;
            }
            Some(0x03) => {
                let q = String::from_utf8_lossy(&p[1..]).into_owned();
                record(sh, TidbEvent::Query(q.clone()));
                query(io, sh, state, q.trim())?;
            }
            _ => io.write(&ok())?,
        }
        io.seq = 0;
    }
    Ok(())
}

fn query(io: &mut Io, sh: &Shared, state: &mut Value, q: &str) -> std::io::Result<()> {
    let upper = q.to_ascii_uppercase();
    if upper == "SHOW SESSION_STATES" {
        let token = format!(
            "token-{}-{}",
            sh.port,
            sh.next.fetch_add(1, Ordering::Relaxed)
        );
        sh.tokens.lock().expect("tokens").push(token.clone());
        return rows(
            io,
            &["Session_states", "Session_token"],
            &[vec![Some(state.to_string()), Some(token)]],
        );
    }
    if let Some(rest) = upper.strip_prefix("SET SESSION_STATES '") {
        // Undo the documented escaping: \\ and \'.
        let raw = &q[q.len() - rest.len()..q.len() - 1];
        let text = raw.replace("\\'", "'").replace("\\\\", "\\");
        return match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                *state = v;
                io.write(&ok())
            }
            Err(e) => io.write(&err(&format!("bad session states: {e}"))),
        };
    }
    if let Some(rest) = q.strip_prefix("SET @") {
        let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
        let value = value.trim().trim_matches('\'').replace("''", "'");
        let vars = state["user-var-values"].as_object_mut().expect("vars");
        vars.insert(name.trim().to_owned(), json!(value));
        return io.write(&ok());
    }
    if let Some(db) = upper.strip_prefix("USE ") {
        state["current-db"] = json!(q[q.len() - db.len()..].trim_matches('`'));
        return io.write(&ok());
    }
    if let Some(list) = q
        .strip_prefix("SELECT ")
        .or_else(|| q.strip_prefix("select "))
    {
        let exprs: Vec<&str> = list.split(',').map(str::trim).collect();
        let vars: Map<String, Value> = state["user-var-values"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let row: Vec<Option<String>> = exprs
            .iter()
            .map(|e| match e.to_ascii_lowercase().as_str() {
                "@@port" => Some(sh.port.to_string()),
                "@@max_allowed_packet" => Some("67108864".into()),
                "@@wait_timeout" => Some("28800".into()),
                "database()" => state["current-db"]
                    .as_str()
                    .map(str::to_owned)
                    .filter(|s| !s.is_empty()),
                v if v.starts_with('@') => vars
                    .get(&e[1..])
                    .and_then(|x| x.as_str())
                    .map(str::to_owned),
                _ => Some(e.to_string()),
            })
            .collect();
        return rows(io, &exprs, &[row]);
    }
    io.write(&ok())
}

fn rows(io: &mut Io, names: &[&str], data: &[Vec<Option<String>>]) -> std::io::Result<()> {
    io.write(&[names.len() as u8])?;
    for n in names {
        io.write(&column_def(n))?;
    }
    io.write(&eof())?;
    for r in data {
        let mut p = Vec::new();
        for v in r {
            match v {
                None => p.push(0xfb),
                Some(s) => {
                    let b = s.as_bytes();
                    if b.len() < 251 {
                        p.push(b.len() as u8);
                    } else {
                        p.push(0xfc);
                        p.extend_from_slice(&(b.len() as u16).to_le_bytes());
                    }
                    p.extend_from_slice(b);
                }
            }
        }
        io.write(&p)?;
    }
    io.write(&eof())
}

fn ok() -> Vec<u8> {
    vec![0, 0, 0, 2, 0, 0, 0]
}

fn eof() -> Vec<u8> {
    vec![0xfe, 0, 0, 2, 0]
}

fn err(msg: &str) -> Vec<u8> {
    let mut e = vec![0xff];
    e.extend_from_slice(&1105u16.to_le_bytes());
    e.extend_from_slice(b"#HY000");
    e.extend_from_slice(msg.as_bytes());
    e
}

fn column_def(name: &str) -> Vec<u8> {
    let mut c = vec![3];
    c.extend_from_slice(b"def");
    c.extend_from_slice(&[0, 0, 0]);
    c.push(name.len() as u8);
    c.extend_from_slice(name.as_bytes());
    c.push(0);
    c.push(0x0c);
    c.extend_from_slice(&45u16.to_le_bytes());
    c.extend_from_slice(&1024u32.to_le_bytes());
    c.push(0xfd);
    c.extend_from_slice(&[0, 0, 0, 0, 0]);
    c
}
