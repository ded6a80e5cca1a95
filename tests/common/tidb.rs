//! A scripted TiDB for what no real TiDB can show here, answering as the recordings of a real
//! tidb-server in tests/data/tidb/ do (see the README there): its greeting (no
//! PLUGIN_AUTH_LENENC_CLIENT_DATA advertised, yet honoured), native logins answered directly,
//! an auth switch for any other plugin name (so a session token written with a one-byte length
//! gets the recorded 0xfe), `tidb_session_token` logins with tokens an instance sharing the
//! registry issued in the last 60 s, `SHOW SESSION_STATES` / `SET SESSION_STATES` with the
//! recorded column definitions and OK (affected rows 2^64-1), DEPRECATE_EOF terminators,
//! binary prepared statements that keep their ids across a move, and the status port:
//! `GET /status` 200, then 500 during a graceful shutdown while the SQL port still greets,
//! then every connection closed without a packet and both ports refused.
//!
//! Each connection runs on its own thread with read timeouts; the accept loops end on drop,
//! on shutdown or after a fixed lifetime, and accept a bounded number of connections.

use super::wire::{accept_loop, Io};
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;

/// How long a session token is accepted after SHOW SESSION_STATES issued it (TiDB: 60 s).
const TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// What the scripted TiDB saw.
#[derive(Clone, Debug, PartialEq)]
pub enum TidbEvent {
    /// A connection closed after the greeting without a handshake response (TiDB logs
    /// nothing for it).
    GreetingOnly,
    /// The response named `plugin` (maybe garbled by a wrong length), so TiDB asked for an
    /// auth switch to mysql_native_password.
    AuthSwitch {
        plugin: String,
    },
    Login {
        user: String,
        plugin: String,
        accepted: bool,
    },
    Query(String),
    Execute(u32),
}

/// Packets and HTTP answers read from the recordings.
struct Recorded {
    greeting: Vec<u8>,
    /// Offset of the connection id in the greeting (the salt follows).
    conn_id_at: usize,
    show_states_columns: Vec<Vec<u8>>,
    set_states_ok: Vec<u8>,
    login_ok: Vec<u8>,
    states_template: Value,
    token_template: Value,
    status_200: Vec<u8>,
    status_500: Vec<u8>,
}

fn data(file: &str) -> Value {
    let path = format!("{}/tests/data/tidb/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).expect("hex"))
        .collect()
}

/// The server packets that follow the client packet labelled `after` in a recording.
fn answers(rec: &Value, after: &str) -> Vec<Vec<u8>> {
    let packets = rec["packets"].as_array().expect("packets");
    let at = packets
        .iter()
        .position(|p| p["label"].as_str().is_some_and(|l| l.starts_with(after)))
        .unwrap_or_else(|| panic!("no packet {after}"));
    packets[at + 1..]
        .iter()
        .take_while(|p| p["dir"] == "s2c")
        .map(|p| unhex(p["hex"].as_str().expect("hex")))
        .collect()
}

impl Recorded {
    fn load() -> Recorded {
        let greeting_rec = data("greeting.json");
        let greeting = unhex(
            greeting_rec["packets"][0]["hex"]
                .as_str()
                .expect("greeting"),
        );
        let conn_id_at = 1 + greeting[1..].iter().position(|&b| b == 0).expect("version") + 1;
        let native = data("login-native.json");
        let show = answers(&native, "COM_QUERY SHOW SESSION_STATES");
        let token = data("token-login.json");
        let status = data("status.json");
        let answers_500 = status["sigterm"]["status_answers_distinct"]
            .as_array()
            .expect("answers")
            .iter()
            .find(|a| a["answer"] == "HTTP 500")
            .expect("a 500 answer")
            .clone();
        Recorded {
            greeting,
            conn_id_at,
            show_states_columns: show[1..3].to_vec(),
            set_states_ok: answers(&token, "COM_QUERY SET SESSION_STATES")[0].clone(),
            login_ok: answers(&native, "HandshakeResponse41")[0].clone(),
            states_template: serde_json::from_str(
                native["session_states"].as_str().expect("states"),
            )
            .expect("states json"),
            token_template: serde_json::from_str(native["session_token"].as_str().expect("token"))
                .expect("token json"),
            status_200: unhex(status["normal"]["raw_hex"].as_str().expect("200")),
            status_500: unhex(answers_500["raw_hex"].as_str().expect("500")),
        }
    }
}

/// Tokens issued by instances sharing a signing certificate, with when they were issued.
pub type TokenRegistry = Arc<Mutex<Vec<(String, Instant)>>>;

struct Shared {
    port: u16,
    password: String,
    rec: Recorded,
    tokens: TokenRegistry,
    events: Mutex<Vec<TidbEvent>>,
    next: AtomicU64,
    /// Set by a graceful shutdown: /status answers 500 while the SQL port still serves.
    draining: AtomicBool,
    /// Open client connections, closed without a packet when the server goes away.
    conns: Mutex<Vec<TcpStream>>,
}

pub struct ScriptedTidb {
    shared: Arc<Shared>,
    status_port: u16,
    stop: Arc<AtomicBool>,
    accept: Vec<JoinHandle<()>>,
}

impl ScriptedTidb {
    /// Starts one instance; instances given the same `tokens` accept each other's tokens,
    /// as TiDBs sharing a signing certificate do.
    pub fn start(password: &str, tokens: TokenRegistry) -> ScriptedTidb {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let status = TcpListener::bind("127.0.0.1:0").expect("bind status");
        status.set_nonblocking(true).expect("nonblocking");
        let status_port = status.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            port,
            password: password.into(),
            rec: Recorded::load(),
            tokens,
            events: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (shared.clone(), stop.clone());
        let sql = std::thread::spawn(move || accept_loop(listener, s2, st2, serve));
        let (s3, st3) = (shared.clone(), stop.clone());
        let http = std::thread::spawn(move || accept_loop(status, s3, st3, serve_status));
        ScriptedTidb {
            shared,
            status_port,
            stop,
            accept: vec![sql, http],
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    pub fn status_addr(&self) -> String {
        format!("127.0.0.1:{}", self.status_port)
    }

    pub fn events(&self) -> Vec<TidbEvent> {
        self.shared.events.lock().expect("events").clone()
    }

    /// SIGTERM with `graceful-wait-before-shutdown = wait`: /status turns 500 at once, the
    /// SQL port keeps greeting, and after `wait` every connection is closed without a packet
    /// and both ports refuse, as recorded in status.json.
    pub fn sigterm(&mut self, wait: Duration) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let (shared, stop) = (self.shared.clone(), self.stop.clone());
        self.accept.push(std::thread::spawn(move || {
            let until = Instant::now() + wait;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            go_away(&shared, &stop);
        }));
    }

    /// kill -9: every connection closed at once without a packet, both ports refused.
    pub fn crash(&self) {
        go_away(&self.shared, &self.stop);
    }
}

fn go_away(shared: &Shared, stop: &AtomicBool) {
    stop.store(true, Ordering::SeqCst);
    for c in shared.conns.lock().expect("conns").drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

impl Drop for ScriptedTidb {
    fn drop(&mut self) {
        go_away(&self.shared, &self.stop);
        for h in self.accept.drain(..) {
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
    let start = (*pos).min(p.len());
    let end = p[start..]
        .iter()
        .position(|&b| b == 0)
        .map_or(p.len(), |n| start + n);
    let s = p[start..end].to_vec();
    *pos = (end + 1).min(p.len());
    s
}

struct Response {
    caps: u32,
    user: String,
    auth: Vec<u8>,
    db: Option<String>,
    plugin: String,
}

/// A HandshakeResponse41 read as TiDB reads it: the auth data's length is length-encoded
/// only when the client set PLUGIN_AUTH_LENENC_CLIENT_DATA (advertised or not), else one byte.
fn parse_response(p: &[u8]) -> Response {
    let caps = u32::from_le_bytes(p[..4].try_into().expect("caps"));
    let mut pos = 32;
    let user = String::from_utf8_lossy(&cstr(p, &mut pos)).into_owned();
    let n = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        super::raw::lenenc_int(p, &mut pos) as usize
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = p[pos] as usize;
        pos += 1;
        n
    } else {
        let s = cstr(p, &mut pos);
        pos -= 1;
        s.len()
    };
    let end = (pos + n).min(p.len());
    let auth = p[pos..end].to_vec();
    pos = end;
    let db = (caps & CLIENT_CONNECT_WITH_DB != 0)
        .then(|| String::from_utf8_lossy(&cstr(p, &mut pos)).into_owned());
    let plugin = if caps & CLIENT_PLUGIN_AUTH != 0 {
        String::from_utf8_lossy(&cstr(p, &mut pos)).into_owned()
    } else {
        "mysql_native_password".into()
    };
    Response {
        caps,
        user,
        auth,
        db: db.filter(|d| !d.is_empty()),
        plugin,
    }
}

fn record(sh: &Shared, e: TidbEvent) {
    sh.events.lock().expect("events").push(e);
}

fn fresh_salt(sh: &Shared) -> Vec<u8> {
    let n = sh.next.fetch_add(1, Ordering::Relaxed) as u32 + u32::from(sh.port);
    // TiDB's salt bytes are printable ASCII without NUL.
    (0..20u32)
        .map(|i| 0x21 + ((n.wrapping_mul(31) + i * 7) % 90) as u8)
        .collect()
}

/// The recorded greeting with this connection's id and salt.
fn greeting(sh: &Shared, conn_id: u32, salt: &[u8]) -> Vec<u8> {
    let mut g = sh.rec.greeting.clone();
    let at = sh.rec.conn_id_at;
    g[at..at + 4].copy_from_slice(&conn_id.to_le_bytes());
    g[at + 4..at + 12].copy_from_slice(&salt[..8]);
    // filler(1) caps(2) charset(1) status(2) caps(2) auth-len(1) reserved(10)
    let second = at + 12 + 19;
    g[second..second + 12].copy_from_slice(&salt[8..20]);
    g
}

fn access_denied(user: &str) -> Vec<u8> {
    let mut e = vec![0xff];
    e.extend_from_slice(&1045u16.to_le_bytes());
    e.extend_from_slice(b"#28000");
    e.extend_from_slice(
        format!("Access denied for user '{user}'@'127.0.0.1' (using password: YES)").as_bytes(),
    );
    e
}

fn serve(stream: TcpStream, sh: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nonblocking(false)?;
    sh.conns.lock().expect("conns").push(stream.try_clone()?);
    let mut io = Io::new(stream);
    let conn_id = 2_097_152 + sh.next.fetch_add(1, Ordering::Relaxed) as u32;
    let salt = fresh_salt(sh);
    io.write(&greeting(sh, conn_id, &salt))?;
    let Ok(resp) = io.read() else {
        record(sh, TidbEvent::GreetingOnly);
        return Ok(());
    };
    let r = parse_response(&resp);
    let accepted = match r.plugin.as_str() {
        "tidb_session_token" => token_valid(sh, &r.auth, &r.user),
        "mysql_native_password" => native_ok(sh, &r.auth, &salt),
        other => {
            // What TiDB did with the one-byte token length: switch to its default plugin.
            record(
                sh,
                TidbEvent::AuthSwitch {
                    plugin: other.into(),
                },
            );
            let salt = fresh_salt(sh);
            let mut switch = vec![0xfe];
            switch.extend_from_slice(b"mysql_native_password\0");
            switch.extend_from_slice(&salt);
            switch.push(0);
            io.write(&switch)?;
            let reply = io.read()?;
            native_ok(sh, &reply, &salt)
        }
    };
    record(
        sh,
        TidbEvent::Login {
            user: r.user.clone(),
            plugin: r.plugin.clone(),
            accepted,
        },
    );
    if !accepted {
        return io.write(&access_denied(&r.user));
    }
    io.write(&sh.rec.login_ok)?;
    let mut state = sh.rec.states_template.clone();
    state["current-db"] = json!(r.db.unwrap_or_default());
    state["user-var-values"] = json!({});
    state["user-var-types"] = json!({});
    state["prepared-stmts"] = json!({});
    state["prepared-stmt-id"] = json!(0);
    let de = r.caps & CLIENT_DEPRECATE_EOF != 0;
    commands(&mut io, sh, &r.user, &mut state, de)
}

fn native_ok(sh: &Shared, reply: &[u8], salt: &[u8]) -> bool {
    reply == native(sh.password.as_bytes(), salt)
}

fn token_valid(sh: &Shared, token: &[u8], user: &str) -> bool {
    let text = String::from_utf8_lossy(token).into_owned();
    let issued = sh
        .tokens
        .lock()
        .expect("tokens")
        .iter()
        .find(|(t, _)| *t == text)
        .map(|(_, at)| *at);
    let named = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["username"].as_str().map(|u| u == user))
        .unwrap_or(false);
    named && issued.is_some_and(|at| at.elapsed() < TOKEN_LIFETIME)
}

fn commands(
    io: &mut Io,
    sh: &Shared,
    user: &str,
    state: &mut Value,
    de: bool,
) -> std::io::Result<()> {
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
                query(io, sh, user, state, q.trim(), de)?;
            }
            Some(0x16) => prepare(io, state, &String::from_utf8_lossy(&p[1..]), de)?,
            Some(0x17) if p.len() >= 5 => {
                let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                record(sh, TidbEvent::Execute(id));
                execute(io, state, id, &p, de)?;
            }
            Some(0x19) => {
                // COM_STMT_CLOSE has no answer.
                if p.len() >= 5 {
                    let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                    if let Some(m) = state["prepared-stmts"].as_object_mut() {
                        m.remove(&id.to_string());
                    }
                }
            }
            _ => io.write(&ok())?,
        }
        io.seq = 0;
    }
    Ok(())
}

fn show_session_states(
    io: &mut Io,
    sh: &Shared,
    user: &str,
    state: &Value,
    de: bool,
) -> std::io::Result<()> {
    let sign_time = format!("{:?}", std::time::SystemTime::now());
    let mut token = sh.rec.token_template.clone();
    // A fresh signature of the recorded length keeps every token distinct and 476 bytes long.
    let sig = token["signature"].as_str().unwrap_or_default().len();
    let n = sh.next.fetch_add(1, Ordering::Relaxed);
    let mut signature = format!("{}-{n}-{sign_time}", sh.port);
    signature = signature.replace(|c: char| !c.is_ascii_alphanumeric(), "A");
    signature = format!("{signature:A<sig$}");
    signature.truncate(sig);
    token["signature"] = json!(signature);
    token["username"] = json!(user);
    let token = token.to_string();
    sh.tokens
        .lock()
        .expect("tokens")
        .push((token.clone(), Instant::now()));
    io.write(&[2])?;
    for c in &sh.rec.show_states_columns {
        io.write(c)?;
    }
    if !de {
        io.write(&eof())?;
    }
    io.write(&text_row(&[Some(state.to_string()), Some(token)]))?;
    io.write(&terminator(de))
}

fn query(
    io: &mut Io,
    sh: &Shared,
    user: &str,
    state: &mut Value,
    q: &str,
    de: bool,
) -> std::io::Result<()> {
    let upper = q.to_ascii_uppercase();
    if upper == "SHOW SESSION_STATES" {
        return show_session_states(io, sh, user, state, de);
    }
    if let Some(rest) = upper.strip_prefix("SET SESSION_STATES '") {
        // Undo the documented escaping: \\ and \'.
        let raw = &q[q.len() - rest.len()..q.len() - 1];
        let text = raw.replace("\\'", "'").replace("\\\\", "\\");
        return match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                *state = v;
                io.write(&sh.rec.set_states_ok)
            }
            Err(e) => io.write(&err(8000, &format!("bad session states: {e}"))),
        };
    }
    if let Some(rest) = q.strip_prefix("SET @") {
        let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
        let value = value.trim().trim_matches('\'').replace("''", "'");
        let vars = state["user-var-values"].as_object_mut().expect("vars");
        vars.insert(name.trim().to_owned(), json!({ "s": value }));
        return io.write(&ok());
    }
    if let Some(rest) = upper.strip_prefix("SET SESSION ") {
        let (name, _) = rest.split_once('=').unwrap_or((rest, ""));
        let value = q[q.len() - rest.len() + name.len() + 1..].trim();
        state["sys-vars"][name.trim().to_ascii_lowercase()] = json!(value.trim_matches('\''));
        return io.write(&ok());
    }
    if let Some(rest) = q.strip_prefix("PREPARE ") {
        let (name, text) = rest.split_once(" FROM ").unwrap_or((rest, ""));
        let id = state["prepared-stmt-id"].as_u64().unwrap_or(0) + 1;
        state["prepared-stmt-id"] = json!(id);
        let db = state["current-db"].clone();
        state["prepared-stmts"][id.to_string()] =
            json!({ "db": db, "name": name.trim(), "text": text.trim().trim_matches('\'') });
        return io.write(&ok());
    }
    if let Some(rest) = q.strip_prefix("EXECUTE ") {
        return execute_sql(io, state, rest, de);
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
                v if v.starts_with("@@") => state["sys-vars"][&v[2..]].as_str().map(str::to_owned),
                v if v.starts_with('@') => vars.get(&e[1..]).and_then(user_var),
                _ => Some(e.to_string()),
            })
            .collect();
        io.write(&[exprs.len() as u8])?;
        for n in &exprs {
            io.write(&column_def(n, 0xfd))?;
        }
        if !de {
            io.write(&eof())?;
        }
        io.write(&text_row(&row))?;
        return io.write(&terminator(de));
    }
    io.write(&ok())
}

/// A user variable as this server stores it (`s`) or as TiDB exports an integer (`i`).
fn user_var(v: &Value) -> Option<String> {
    v["s"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| v["i"].as_i64().map(|i| i.to_string()))
}

/// `EXECUTE name USING @var` of a statement prepared with PREPARE (a text row).
fn execute_sql(io: &mut Io, state: &Value, rest: &str, de: bool) -> std::io::Result<()> {
    let (name, var) = rest.split_once(" USING @").unwrap_or((rest, ""));
    let text = state["prepared-stmts"]
        .as_object()
        .and_then(|m| m.values().find(|s| s["name"] == name.trim()))
        .and_then(|s| s["text"].as_str());
    let Some(text) = text else {
        return io.write(&err(8111, "Prepared statement not found"));
    };
    let arg = user_var(&state["user-var-values"][var.trim()]).and_then(|v| v.parse().ok());
    let expr = expr_of(text);
    io.write(&[1])?;
    io.write(&column_def(expr, 0x08))?;
    if !de {
        io.write(&eof())?;
    }
    io.write(&text_row(&[eval(expr, arg).map(|v| v.to_string())]))?;
    io.write(&execute_terminator(de))
}

/// `?<op><n>` with the parameter `arg`.
fn eval(expr: &str, arg: Option<i64>) -> Option<i64> {
    let (op, n) = expr.trim_start_matches('?').split_at(1);
    let n: i64 = n.trim().parse().ok()?;
    let v = arg?;
    match op {
        "+" => Some(v + n),
        "*" => Some(v * n),
        "-" => Some(v - n),
        _ => None,
    }
}

/// COM_STMT_PREPARE: the next id of this session (ids travel in the session states, so a
/// moved session keeps them), answered as recorded: params then columns, EOFs only without
/// DEPRECATE_EOF.
fn prepare(io: &mut Io, state: &mut Value, text: &str, de: bool) -> std::io::Result<()> {
    let id = state["prepared-stmt-id"].as_u64().unwrap_or(0) as u32 + 1;
    state["prepared-stmt-id"] = json!(id);
    let db = state["current-db"].clone();
    state["prepared-stmts"][id.to_string()] = json!({ "db": db, "text": text });
    let params = text.matches('?').count() as u16;
    let mut okp = vec![0];
    okp.extend_from_slice(&id.to_le_bytes());
    okp.extend_from_slice(&1u16.to_le_bytes());
    okp.extend_from_slice(&params.to_le_bytes());
    okp.extend_from_slice(&[0, 0, 0]);
    io.write(&okp)?;
    for _ in 0..params {
        io.write(&column_def("?", 0x08))?;
    }
    if params > 0 && !de {
        io.write(&eof())?;
    }
    io.write(&column_def(expr_of(text), 0x08))?;
    if !de {
        io.write(&eof())?;
    }
    Ok(())
}

fn expr_of(text: &str) -> &str {
    let t = text.trim();
    t.get(7..)
        .filter(|_| t[..7].eq_ignore_ascii_case("SELECT "))
        .unwrap_or(t)
}

/// COM_STMT_EXECUTE of `SELECT ?<op><n>` with one integer parameter; a binary row.
fn execute(io: &mut Io, state: &Value, id: u32, p: &[u8], de: bool) -> std::io::Result<()> {
    let Some(text) = state["prepared-stmts"][id.to_string()]["text"].as_str() else {
        return io.write(&err(
            8111,
            &format!("Prepared statement not found: stmt_id {id}"),
        ));
    };
    // id(4) flags(1) iterations(4) null-bitmap(1) bound(1) type(2) value
    let value = p
        .get(14..)
        .and_then(|v| param_int(p.get(12).copied().unwrap_or(0), v));
    let expr = expr_of(text);
    let result = eval(expr, value);
    io.write(&[1])?;
    io.write(&column_def(expr, 0x08))?;
    if !de {
        io.write(&eof())?;
    }
    let mut row = vec![0, 0];
    match result {
        Some(v) => row.extend_from_slice(&v.to_le_bytes()),
        None => row[1] = 0b100, // NULL (the bitmap starts at bit 2)
    }
    io.write(&row)?;
    io.write(&execute_terminator(de))
}

fn param_int(ty: u8, v: &[u8]) -> Option<i64> {
    match ty {
        0x01 => v.first().map(|&b| i64::from(b as i8)),
        0x02 => Some(i64::from(i16::from_le_bytes(v.get(..2)?.try_into().ok()?))),
        0x03 => Some(i64::from(i32::from_le_bytes(v.get(..4)?.try_into().ok()?))),
        0x08 => Some(i64::from_le_bytes(v.get(..8)?.try_into().ok()?)),
        0x0f | 0xfd | 0xfe => {
            let mut pos = 0;
            let n = super::raw::lenenc_int(v, &mut pos) as usize;
            std::str::from_utf8(v.get(pos..pos + n)?).ok()?.parse().ok()
        }
        _ => None,
    }
}

fn text_row(values: &[Option<String>]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in values {
        match v {
            None => p.push(0xfb),
            Some(s) => {
                let b = s.as_bytes();
                if b.len() < 251 {
                    p.push(b.len() as u8);
                } else if b.len() < 1 << 16 {
                    p.push(0xfc);
                    p.extend_from_slice(&(b.len() as u16).to_le_bytes());
                } else {
                    p.push(0xfd);
                    p.extend_from_slice(&(b.len() as u32).to_le_bytes()[..3]);
                }
                p.extend_from_slice(b);
            }
        }
    }
    p
}

fn ok() -> Vec<u8> {
    vec![0, 0, 0, 2, 0, 0, 0]
}

fn eof() -> Vec<u8> {
    vec![0xfe, 0, 0, 2, 0]
}

/// The end of an executed prepared statement's result: as recorded, TiDB counts one warning
/// (its plan cache notes why it skipped the statement).
fn execute_terminator(de: bool) -> Vec<u8> {
    let mut t = terminator(de);
    // warnings follow the two length-encoded zeros of an OK, or the 0xfe of an EOF
    t[if de { 5 } else { 1 }] = 1;
    t
}

/// The end of a result set: with DEPRECATE_EOF an OK packet with the 0xfe header (as recorded:
/// `fe 00 00 02 00 00 00`), else a classic EOF.
fn terminator(de: bool) -> Vec<u8> {
    if de {
        vec![0xfe, 0, 0, 2, 0, 0, 0]
    } else {
        eof()
    }
}

fn err(code: u16, msg: &str) -> Vec<u8> {
    let mut e = vec![0xff];
    e.extend_from_slice(&code.to_le_bytes());
    e.extend_from_slice(b"#HY000");
    e.extend_from_slice(msg.as_bytes());
    e
}

/// A column definition as TiDB sends it: integers binary (charset 63, length 20), strings
/// in utf8mb4_bin.
fn column_def(name: &str, ty: u8) -> Vec<u8> {
    let mut c = vec![3];
    c.extend_from_slice(b"def");
    c.extend_from_slice(&[0, 0, 0]);
    c.push(name.len() as u8);
    c.extend_from_slice(name.as_bytes());
    c.push(0);
    c.push(0x0c);
    let (charset, len, flags) = if ty == 0x08 {
        (63u16, 20u32, 0x80u16)
    } else {
        (46, 1024, 0)
    };
    c.extend_from_slice(&charset.to_le_bytes());
    c.extend_from_slice(&len.to_le_bytes());
    c.push(ty);
    c.extend_from_slice(&flags.to_le_bytes());
    c.extend_from_slice(&[0, 0, 0]);
    c
}

/// The status port: `GET /status` answered with the recorded 200, or the recorded 500 while
/// a graceful shutdown waits.
fn serve_status(mut stream: TcpStream, sh: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    if sh.draining.load(Ordering::SeqCst) {
        stream.write_all(&sh.rec.status_500)
    } else {
        stream.write_all(&sh.rec.status_200)
    }
}
