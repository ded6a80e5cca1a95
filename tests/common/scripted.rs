//! A scripted MySQL 8 backend for what MariaDB cannot show: caching_sha2_password full
//! authentication (RSA key exchange) and a malformed packet from the backend.
//!
//! It only understands what the tests need; every connection runs on its own thread with
//! read timeouts, and the accept loop ends on drop or after a fixed lifetime.

use super::wire::{accept_loop, Io};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// What the backend does after it accepts the client's login.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Script {
    /// Answers every query with one row: `v = 'scripted'`.
    Answer,
    /// Answers the first query with a packet that breaks the protocol (wrong sequence id and a
    /// truncated length-encoded column count), then keeps the socket open.
    Malformed,
    /// Greets, reads the HandshakeResponse, then says nothing more: a backend that hangs
    /// mid-authentication.
    StallInAuth,
}

/// What the backend observed, for the test to check after the fact.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A HandshakeResponse arrived: who, and which plugin the sender named.
    Response {
        user: String,
        plugin: String,
    },
    /// The scramble reply to the AuthSwitchRequest matched the password.
    FastAuthMatched(bool),
    /// The full-auth password (RSA-decrypted when `rsa`) matched.
    FullAuth {
        rsa: bool,
        matched: bool,
    },
    Query(String),
}

pub struct ScriptedBackend {
    port: u16,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    accept: Option<JoinHandle<()>>,
    _dir: TempDir,
}

struct Shared {
    password: String,
    key: RsaPrivateKey,
    public_pem: String,
    script: Script,
    events: Arc<Mutex<Vec<Event>>>,
}

impl ScriptedBackend {
    pub fn start(password: &str, script: Script) -> ScriptedBackend {
        let dir = TempDir::new().expect("tempdir");
        let key = RsaPrivateKey::from_pkcs8_pem(&super::tls::rsa_private_pem(dir.path()))
            .expect("parse rsa key");
        let public_pem = RsaPublicKey::from(&key)
            .to_public_key_pem(LineEnding::LF)
            .expect("public pem");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            password: password.to_string(),
            key,
            public_pem,
            script,
            events: events.clone(),
        });
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, shared, stop2, serve));
        ScriptedBackend {
            port,
            stop,
            events,
            accept: Some(accept),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

const CAPS: u32 = 0x1
    | 0x2
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

fn serve(stream: TcpStream, sh: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nonblocking(false)?;
    let mut io = Io::new(stream);
    let scramble1 = scramble();
    io.write(&greeting(&scramble1))?;
    let resp = io.read()?;
    let (user, plugin) = parse_response(&resp);
    record(sh, Event::Response { user, plugin });
    if sh.script == Script::StallInAuth {
        // Holds the socket until the proxy gives up (or the read timeout ends the thread).
        let _ = io.read();
        return Ok(());
    }

    let scramble2 = scramble();
    let mut switch = vec![0xfe];
    switch.extend_from_slice(b"caching_sha2_password\0");
    switch.extend_from_slice(&scramble2);
    switch.push(0);
    io.write(&switch)?;
    let reply = io.read()?;
    let expected = sha2_scramble(sh.password.as_bytes(), &scramble2);
    record(sh, Event::FastAuthMatched(reply == expected));

    // Pretend the server's auth cache is cold, which forces full authentication.
    io.write(&[0x01, 0x04])?;
    let p = io.read()?;
    let mut want = sh.password.as_bytes().to_vec();
    want.push(0);
    let (rsa, matched) = if p == [0x02] {
        let mut key = vec![0x01];
        key.extend_from_slice(sh.public_pem.as_bytes());
        io.write(&key)?;
        let enc = io.read()?;
        let plain = sh
            .key
            .decrypt(Oaep::new::<sha1::Sha1>(), &enc)
            .unwrap_or_default();
        let unxored: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ scramble2[i % scramble2.len()])
            .collect();
        (true, unxored == want)
    } else {
        (false, p == want)
    };
    record(sh, Event::FullAuth { rsa, matched });
    if !matched {
        let mut err = vec![0xff];
        err.extend_from_slice(&1045u16.to_le_bytes());
        err.extend_from_slice(b"#28000Access denied (scripted backend)");
        return io.write(&err);
    }
    io.write(&ok())?;
    commands(&mut io, sh)
}

fn commands(io: &mut Io, sh: &Shared) -> std::io::Result<()> {
    for _ in 0..100_000 {
        let p = io.read()?;
        match p.first() {
            Some(0x01) | None => return Ok(()),
            Some(0x03) => {
                record(
                    sh,
                    Event::Query(String::from_utf8_lossy(&p[1..]).into_owned()),
                );
                if sh.script == Script::Malformed {
                    // Wrong sequence id (9 instead of 1) and 0xfc without its two length bytes.
                    io.s.write_all(&[2, 0, 0, 9, 0xfc, 0x01])?;
                    continue;
                }
                io.write(&[1])?;
                io.write(&column_def("v"))?;
                io.write(&eof())?;
                io.write(b"\x08scripted")?;
                io.write(&eof())?;
            }
            _ => io.write(&ok())?,
        }
        io.seq = 0;
    }
    Ok(())
}

fn record(sh: &Shared, e: Event) {
    sh.events.lock().expect("events").push(e);
}

fn scramble() -> [u8; 20] {
    // Printable, non-zero bytes like real servers send; unpredictability is not needed here.
    let mut out = [0u8; 20];
    let seed = Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
    let mut x = seed | 1;
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = 0x21 + (x % 90) as u8;
    }
    out
}

fn greeting(s: &[u8; 20]) -> Vec<u8> {
    let mut g = vec![10];
    g.extend_from_slice(b"8.0.36-scripted\0");
    g.extend_from_slice(&7u32.to_le_bytes());
    g.extend_from_slice(&s[..8]);
    g.push(0);
    g.extend_from_slice(&(CAPS as u16).to_le_bytes());
    g.push(255); // utf8mb4_0900_ai_ci
    g.extend_from_slice(&2u16.to_le_bytes()); // autocommit
    g.extend_from_slice(&((CAPS >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(&s[8..]);
    g.push(0);
    g.extend_from_slice(b"caching_sha2_password\0");
    g
}

/// (user, auth plugin) from a HandshakeResponse41.
fn parse_response(p: &[u8]) -> (String, String) {
    let caps = u32::from_le_bytes(p[..4].try_into().expect("caps"));
    let cstr = |pos: &mut usize| {
        let end = p[*pos..]
            .iter()
            .position(|&b| b == 0)
            .map_or(p.len(), |n| *pos + n);
        let s = String::from_utf8_lossy(&p[*pos..end]).into_owned();
        *pos = (end + 1).min(p.len());
        s
    };
    let mut pos = 32;
    let user = cstr(&mut pos);
    let auth_len = if caps & 0x20_0000 != 0 {
        super::raw::lenenc_int(p, &mut pos) as usize
    } else {
        let n = p[pos] as usize;
        pos += 1;
        n
    };
    pos += auth_len;
    if caps & 0x8 != 0 {
        cstr(&mut pos);
    }
    let plugin = if caps & 0x8_0000 != 0 {
        cstr(&mut pos)
    } else {
        String::new()
    };
    (user, plugin)
}

/// XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)) + scramble)), as caching_sha2_password computes it.
pub fn sha2_scramble(pw: &[u8], scramble: &[u8]) -> Vec<u8> {
    let h1 = Sha256::digest(pw);
    let h2 = Sha256::digest(h1);
    let mut h = Sha256::new();
    h.update(h2);
    h.update(scramble);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn ok() -> Vec<u8> {
    vec![0, 0, 0, 2, 0, 0, 0]
}

fn eof() -> Vec<u8> {
    vec![0xfe, 0, 0, 2, 0]
}

fn column_def(name: &str) -> Vec<u8> {
    let mut c = vec![3];
    c.extend_from_slice(b"def");
    c.extend_from_slice(&[0, 0, 0]); // schema, table, org_table
    c.push(name.len() as u8);
    c.extend_from_slice(name.as_bytes());
    c.push(0); // org_name
    c.push(0x0c);
    c.extend_from_slice(&33u16.to_le_bytes());
    c.extend_from_slice(&255u32.to_le_bytes());
    c.push(0xfd);
    c.extend_from_slice(&[0, 0, 0, 0, 0]);
    c
}
