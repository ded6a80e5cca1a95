//! Replay: reads a capture's files and plays each recorded session's commands against this
//! proxy's backends, logged in as the given user, keeping the recorded gaps between commands
//! (divided by `speed`). Prepared statements are prepared again and their ids translated.

use super::cipher::{self, Key};
use super::format::{Meta, Reader, Record};
use super::jobs::{rfc3339_nanos, Job, JobKind, StartError};
use super::sql_kind::is_read_only;
use crate::balance::Backend;
use crate::protocol::constants::{cap, cmd, DEFAULT_COLLATION, MAX_PAYLOAD};
use crate::protocol::handshake::HandshakeResponse;
use crate::protocol::PacketConn;
use crate::proxy::backend_conn::{dial, finish_auth, AuthAnswer, AuthError, Identity};
use crate::proxy::context::ProxyContext;
use crate::proxy::migrate::credential::stage1_from_password;
use crate::proxy::migrate::sql;
use crate::proxy::relay::{Observer, Verdict};
use crate::proxy::response::{ResponseObserver, Shape};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

pub const MIN_SPEED: f64 = 0.1;
pub const MAX_SPEED: f64 = 10.0;
/// Records read ahead of the clock.
const READ_AHEAD: usize = 4096;
/// Commands queued for one replayed session before the reader waits for it.
const PER_SESSION_QUEUE: usize = 256;

const REPLAY_CAPABILITIES: u32 = cap::LONG_PASSWORD
    | cap::LONG_FLAG
    | cap::PROTOCOL_41
    | cap::TRANSACTIONS
    | cap::SECURE_CONNECTION
    | cap::MULTI_STATEMENTS
    | cap::MULTI_RESULTS
    | cap::PS_MULTI_RESULTS
    | cap::PLUGIN_AUTH
    | cap::PLUGIN_AUTH_LENENC_DATA
    | cap::DEPRECATE_EOF;

/// What `POST /api/traffic/replay` asks for. The password is wiped when dropped and never
/// printed.
pub struct ReplayConfig {
    pub input: String,
    pub username: String,
    pub password: Zeroizing<String>,
    pub speed: f64,
    pub read_only: bool,
    pub start_time: Option<SystemTime>,
    /// `security.encryption-key-path`: read when the capture was encrypted.
    pub key_path: String,
}

impl std::fmt::Debug for ReplayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayConfig")
            .field("input", &self.input)
            .field("username", &self.username)
            .field("password", &"<secret>")
            .field("speed", &self.speed)
            .field("read_only", &self.read_only)
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    dispatched: AtomicU64,
    replayed: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    last_cmd_ns: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl Counters {
    fn failure(&self, why: String) {
        self.failed.fetch_add(1, Relaxed);
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// What every replayed session shares.
struct Shared {
    ctx: Arc<ProxyContext>,
    job: Arc<Job>,
    counters: Counters,
    user: Vec<u8>,
    /// SHA1(password), the only form of it kept; None for an empty password.
    stage1: Option<Zeroizing<[u8; 20]>>,
    read_only: bool,
    next_backend: AtomicUsize,
}

/// Checks the request and the input's meta file, then starts the replay.
pub fn start(ctx: &Arc<ProxyContext>, cfg: ReplayConfig) -> Result<Arc<Job>, StartError> {
    ctx.traffic.jobs.ensure_idle()?;
    let invalid = |m: String| Err(StartError::Invalid(m));
    if cfg.input.is_empty() {
        return invalid("input is required".into());
    }
    if cfg.input.contains("://") {
        return invalid(format!(
            "input {:?}: only a local directory is supported, not external storage",
            cfg.input
        ));
    }
    if cfg.username.is_empty() {
        return invalid("username is required".into());
    }
    let speed = if cfg.speed == 0.0 { 1.0 } else { cfg.speed };
    if !(MIN_SPEED..=MAX_SPEED).contains(&speed) {
        return invalid(format!(
            "speed should be between {MIN_SPEED} and {MAX_SPEED}"
        ));
    }
    let now = SystemTime::now();
    let start_time = cfg.start_time.unwrap_or(now);
    if start_time + Duration::from_secs(60) < now {
        return invalid("start time should not be in the past".into());
    }
    let dir = PathBuf::from(&cfg.input);
    let meta = Meta::read(&dir).map_err(|e| StartError::Invalid(e.to_string()))?;
    let key = match meta.encryption_method.as_str() {
        "" | "plaintext" => None,
        cipher::AES256_CTR => Some(Key::load(&cfg.key_path).map_err(|e| {
            StartError::Invalid(format!("the capture is encrypted with aes256-ctr: {e}"))
        })?),
        other => {
            return invalid(format!(
                "the capture's encryption method {other:?} is unknown"
            ))
        }
    };
    let details = json!({
        "input": cfg.input,
        "username": cfg.username,
        "speed": speed,
        "readonly": cfg.read_only,
    });
    let details = details.as_object().cloned().unwrap_or_default();
    let job = ctx
        .traffic
        .jobs
        .admit(Job::new(JobKind::Replay, start_time, details))?;
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        job: job.clone(),
        counters: Counters::default(),
        user: cfg.username.as_bytes().to_vec(),
        stage1: (!cfg.password.is_empty())
            .then(|| Zeroizing::new(stage1_from_password(cfg.password.as_bytes()))),
        read_only: cfg.read_only,
        next_backend: AtomicUsize::new(0),
    });
    info!(input = %cfg.input, username = %cfg.username, speed, read_only = cfg.read_only, cmds = meta.cmds, "traffic replay started");
    tokio::spawn(run(shared, meta, dir, speed, key));
    Ok(job)
}

/// Reads every file of the capture in order into `tx`, on its own thread (file reads block).
fn read_files(
    dir: &Path,
    files: Vec<String>,
    key: Option<Key>,
    tx: mpsc::Sender<io::Result<Record>>,
) {
    for f in files {
        let mut reader = match Reader::open(&dir.join(&f), key.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let next = reader.next_record();
            let stop = !matches!(next, Ok(Some(_)));
            let item = match next {
                Ok(Some(r)) => Ok(r),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    }
}

async fn run(shared: Arc<Shared>, meta: Meta, dir: PathBuf, speed: f64, key: Option<Key>) {
    let job = shared.job.clone();
    let cancel = job.cancel.clone();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let files = meta.files.clone();
    let reader_dir = dir.clone();
    let _reader = std::thread::Builder::new()
        .name("traffic-replay-read".into())
        .spawn(move || read_files(&reader_dir, files, key, tx));
    let mut sessions: HashMap<u64, mpsc::Sender<Record>> = HashMap::new();
    let mut ended: HashSet<u64> = HashSet::new();
    let mut tasks = JoinSet::new();
    let mut origin: Option<(u64, tokio::time::Instant)> = None;
    let total = meta.cmds.max(1) as f64;
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = rx.recv() => r,
        };
        let rec = match next {
            None => break,
            Some(Err(e)) => {
                job.fail(format!("reading the traffic files failed: {e}"));
                break;
            }
            Some(Ok(r)) => r,
        };
        let (t0, s0) = *origin.get_or_insert((rec.at_ns(), tokio::time::Instant::now()));
        let offset = rec.at_ns().saturating_sub(t0) as f64 / speed;
        let due = s0 + Duration::from_nanos(offset as u64);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = crate::timer::sleep_until(due) => {}
        }
        let conn = rec.conn();
        let quit =
            matches!(&rec, Record::Command { payload, .. } if payload.first() == Some(&cmd::QUIT));
        if let Record::Command { at_ns, .. } = &rec {
            let n = shared.counters.dispatched.fetch_add(1, Relaxed) + 1;
            shared.counters.last_cmd_ns.store(*at_ns, Relaxed);
            job.set_fraction(n as f64 / total);
            if n.is_multiple_of(256) {
                report(&shared);
            }
        }
        if ended.contains(&conn) {
            shared.counters.skipped.fetch_add(1, Relaxed);
            continue;
        }
        let sender = sessions.entry(conn).or_insert_with(|| {
            let (t, r) = mpsc::channel(PER_SESSION_QUEUE);
            tasks.spawn(replay_session(shared.clone(), r));
            t
        });
        let sent = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = sender.send(rec) => r.is_ok(),
        };
        if !sent {
            // The session gave up (its connection failed): its later commands are skipped.
            shared.counters.skipped.fetch_add(1, Relaxed);
            sessions.remove(&conn);
            ended.insert(conn);
        } else if quit {
            sessions.remove(&conn);
            ended.insert(conn);
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(rx);
    // Sessions finish what they were given, unless the job is cancelled.
    drop(sessions);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            r = tasks.join_next() => if r.is_none() { break },
        }
    }
    report(&shared);
    let c = &shared.counters;
    info!(
        replayed = c.replayed.load(Relaxed),
        failed = c.failed.load(Relaxed),
        skipped = c.skipped.load(Relaxed),
        "traffic replay finished"
    );
    job.finish();
}

fn report(shared: &Shared) {
    let c = &shared.counters;
    let job = &shared.job;
    job.set_counter("replayed_cmds", c.replayed.load(Relaxed));
    job.set_counter("failed_cmds", c.failed.load(Relaxed));
    job.set_counter("skipped_cmds", c.skipped.load(Relaxed));
    let last = c.last_cmd_ns.load(Relaxed);
    if last > 0 {
        job.set_counter("last_cmd_ts", rfc3339_nanos(last));
    }
    if let Some(f) = c
        .last_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        job.set_counter("last_failure", f);
    }
}

/// A replayed session's connection and its prepared statements.
struct Replayed {
    conn: PacketConn,
    deprecate_eof: bool,
    /// Recorded statement id -> the backend's (None: left out by a read-only replay).
    stmts: HashMap<u32, Option<u32>>,
    /// Statements prepared by a replayed COM_STMT_PREPARE whose recorded id is not known yet:
    /// the next `Prepared` record with the same text takes one.
    unclaimed: HashMap<Vec<u8>, Vec<u32>>,
}

async fn replay_session(shared: Arc<Shared>, mut rx: mpsc::Receiver<Record>) {
    let cancel = shared.job.cancel.clone();
    let login = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        r = login(&shared) => r,
    };
    let mut s = match login {
        Ok(s) => s,
        Err(e) => {
            if e.fatal {
                shared.job.fail(e.message);
            } else {
                shared.counters.failure(e.message);
            }
            return;
        }
    };
    loop {
        let rec = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = rx.recv() => r,
        };
        let Some(rec) = rec else { break };
        let step = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = s.apply(&shared, rec) => r,
        };
        match step {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                shared
                    .counters
                    .failure(format!("the replay connection failed: {e}"));
                return;
            }
        }
    }
    let _ = s.conn.write_packet(0, &[cmd::QUIT]).await;
}

struct LoginFailure {
    message: String,
    /// The same would happen to every session: the job stops.
    fatal: bool,
}

async fn login(shared: &Shared) -> Result<Replayed, LoginFailure> {
    let ctx = &shared.ctx;
    let healthy: Vec<Arc<Backend>> = ctx
        .backends
        .snapshot()
        .iter()
        .filter(|b| b.is_healthy())
        .cloned()
        .collect();
    if healthy.is_empty() {
        return Err(LoginFailure {
            message: "no healthy backend to replay against".into(),
            fatal: false,
        });
    }
    let backend = &healthy[shared.next_backend.fetch_add(1, Relaxed) % healthy.len()];
    let identity = HandshakeResponse {
        capabilities: REPLAY_CAPABILITIES,
        max_packet: 1 << 24,
        collation: DEFAULT_COLLATION,
        user: shared.user.clone(),
        ..Default::default()
    };
    let answer = match &shared.stage1 {
        Some(s1) => AuthAnswer::Native(s1),
        None => AuthAnswer::EmptyPassword,
    };
    let who = Identity {
        response: &identity,
        capabilities: identity.capabilities,
    };
    let settings = ctx.settings();
    let fail = |message: String, fatal: bool| LoginFailure { message, fatal };
    let dialing = async {
        let mut d = dial(
            backend,
            who,
            answer,
            ctx,
            64 << 10,
            settings.require_backend_tls,
        )
        .await
        .map_err(|e| fail(format!("connecting to {} failed: {e}", backend.addr), false))?;
        finish_auth(&mut d.conn, answer)
            .await
            .map_err(|e| match e {
                AuthError::Refused(_) | AuthError::Plugin(_) => fail(
                    format!(
                        "{} refused the replay user's login: {e} (replay logs in with \
                     mysql_native_password)",
                        backend.addr
                    ),
                    true,
                ),
                e => fail(format!("logging in to {} failed: {e}", backend.addr), false),
            })?;
        Ok(d)
    };
    let d = crate::timer::timeout(settings.backend_connect_timeout * 2, dialing)
        .await
        .map_err(|_| fail(format!("logging in to {} timed out", backend.addr), false))??;
    debug!(backend = %backend.addr, "replay session logged in");
    Ok(Replayed {
        conn: d.conn,
        deprecate_eof: d.capabilities & cap::DEPRECATE_EOF != 0,
        stmts: HashMap::new(),
        unclaimed: HashMap::new(),
    })
}

impl Replayed {
    /// Plays one record; Ok(false) once the session quit. Errs when the connection broke.
    async fn apply(&mut self, shared: &Shared, rec: Record) -> io::Result<bool> {
        let c = &shared.counters;
        match rec {
            Record::Session { init, .. } => {
                for stmt in init {
                    if shared.read_only && !is_read_only(&stmt) {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&stmt);
                    if let Err(e) = sql::exec(&mut self.conn, &text, self.deprecate_eof).await {
                        match e {
                            sql::SqlError::Server(err) => {
                                c.failure(format!("restoring the session's state: {err}"))
                            }
                            other => return Err(io::Error::other(other.to_string())),
                        }
                    }
                }
                Ok(true)
            }
            Record::Prepared { id, text, .. } => {
                if shared.read_only && !is_read_only(&text) {
                    self.stmts.insert(id, None);
                    return Ok(true);
                }
                let claimed = self.unclaimed.get_mut(&text).and_then(Vec::pop);
                let backend_id = match claimed {
                    Some(b) => Some(b),
                    None => match sql::prepare(&mut self.conn, &text, self.deprecate_eof).await {
                        Ok(b) => Some(b),
                        Err(sql::SqlError::Server(e)) => {
                            c.failure(format!("preparing a statement: {e}"));
                            None
                        }
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    },
                };
                self.stmts.insert(id, backend_id);
                Ok(true)
            }
            Record::Command { mut payload, .. } => {
                let Some(&command) = payload.first() else {
                    return Ok(true);
                };
                if command == cmd::QUIT {
                    let _ = self.conn.write_packet(0, &[cmd::QUIT]).await;
                    c.replayed.fetch_add(1, Relaxed);
                    return Ok(false);
                }
                let text_ok = |p: &[u8]| !shared.read_only || is_read_only(&p[1..]);
                if matches!(command, cmd::QUERY | cmd::STMT_PREPARE) && !text_ok(&payload) {
                    c.skipped.fetch_add(1, Relaxed);
                    return Ok(true);
                }
                if let Some(id) = cmd::statement_id(&payload) {
                    let mapped = self.stmts.get(&id).copied().flatten();
                    if command == cmd::STMT_CLOSE {
                        self.stmts.remove(&id);
                    }
                    let Some(backend_id) = mapped else {
                        c.skipped.fetch_add(1, Relaxed);
                        return Ok(true);
                    };
                    payload[1..5].copy_from_slice(&backend_id.to_le_bytes());
                }
                if matches!(command, cmd::RESET_CONNECTION) {
                    self.stmts.clear();
                    self.unclaimed.clear();
                }
                self.conn.write_packet(0, &payload).await?;
                let Some(shape) = Shape::of(command) else {
                    c.replayed.fetch_add(1, Relaxed);
                    return Ok(true);
                };
                let obs = read_response(&mut self.conn, shape, self.deprecate_eof).await?;
                match obs.error {
                    Some(code) => c.failure(format!("error {code}: {}", obs.error_message)),
                    None => {
                        c.replayed.fetch_add(1, Relaxed);
                        if let (cmd::STMT_PREPARE, Some(id)) = (command, obs.prepared_id) {
                            self.unclaimed
                                .entry(payload[1..].to_vec())
                                .or_default()
                                .push(id);
                        }
                    }
                }
                Ok(true)
            }
        }
    }
}

/// Reads one whole response; a LOCAL INFILE request gets an empty file (the capture leaves
/// LOAD DATA out, so only a statement that asks for one unprompted gets here).
async fn read_response(
    conn: &mut PacketConn,
    shape: Shape,
    deprecate_eof: bool,
) -> io::Result<ResponseObserver> {
    let mut obs = ResponseObserver::new(shape, deprecate_eof);
    loop {
        let (seq, p) = conn.read_packet(MAX_PAYLOAD).await?;
        let mut continued = p.len() == MAX_PAYLOAD;
        while continued {
            let (_, more) = conn.read_packet(MAX_PAYLOAD).await?;
            continued = more.len() == MAX_PAYLOAD;
        }
        let verdict = obs
            .on_packet(p.len(), &p, true)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if verdict == Verdict::Done {
            if !obs.local_infile {
                return Ok(obs);
            }
            warn!("a replayed statement asked for a LOCAL INFILE upload; sending an empty file");
            conn.write_packet(seq.wrapping_add(1), &[]).await?;
            obs.resume_after_infile();
        }
    }
}
