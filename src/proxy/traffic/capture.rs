//! Capture: while a job runs, each session hands its client's command packets to a bounded
//! channel without waiting; one writer thread puts them in the output directory and writes
//! the meta file at the end. A full channel drops the command and counts it, so a slow disk
//! never slows queries.

use super::cipher::{self, Key};
use super::format::{Meta, Record, Writer, META_FILE, VERSION};
use super::jobs::{self, go_duration_string, Job, JobKind, StartError};
use super::sql_kind::is_sensitive;
use super::Traffic;
use crate::protocol::conn::HEADER_LEN;
use crate::protocol::constants::{cmd, MAX_PAYLOAD};
use crate::proxy::session::Session;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Records waiting for the writer; past this, commands are dropped and counted.
const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Larger commands are left out (and counted as filtered): capturing one means holding it
/// whole in the session's buffer.
pub const MAX_CAPTURED_PACKET: usize = 4 << 20;
/// How often the writer looks at the clock and the cancel flag while the channel is quiet.
const TICK: Duration = Duration::from_millis(100);
/// How long the writer waits for sessions still sending once the capture has stopped.
const DRAIN: Duration = Duration::from_secs(2);

/// What `POST /api/traffic/capture` asks for.
pub struct CaptureConfig {
    pub output: String,
    pub duration: Duration,
    pub compress: bool,
    pub encryption_method: String,
    /// `security.encryption-key-path`: the key file for `aes256-ctr`.
    pub key_path: String,
    /// When the capture is deemed to start (TiProxy's `start-time`, used as the job's id
    /// across a cluster); now when not given.
    pub start_time: Option<SystemTime>,
}

#[derive(Default)]
struct Counters {
    cmds: AtomicU64,
    filtered: AtomicU64,
    dropped: AtomicU64,
    sessions: AtomicU64,
}

/// Sessions seen by this capture, and the prepared statements each has had written down.
type Seen = HashMap<u64, HashSet<u32>>;

/// Where sessions send their commands while a capture runs.
pub struct Sink {
    tx: SyncSender<Record>,
    seen: Mutex<Seen>,
    counters: Arc<Counters>,
}

impl Sink {
    fn send(&self, r: Record) -> bool {
        match self.tx.try_send(r) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Records the command at the head of `s`'s client buffer, `len` bytes long (called only
/// while a capture runs). Errs only when reading the command from the client fails.
pub(crate) async fn record_command(
    traffic: &Traffic,
    s: &mut Session,
    len: usize,
) -> std::io::Result<()> {
    let Some(sink) = traffic.sink() else {
        return Ok(());
    };
    if len == 0 || len >= MAX_PAYLOAD || len > MAX_CAPTURED_PACKET {
        sink.counters.filtered.fetch_add(1, Relaxed);
        return Ok(());
    }
    s.client.fill_to(HEADER_LEN + len).await?;
    let payload = &s.client.buffered()[HEADER_LEN..HEADER_LEN + len];
    let command = payload[0];
    if matches!(command, cmd::QUERY | cmd::STMT_PREPARE) && is_sensitive(&payload[1..]) {
        sink.counters.filtered.fetch_add(1, Relaxed);
        return Ok(());
    }
    let at_ns = now_ns();
    let conn = s.id;
    let stmt_id = cmd::statement_id(payload);
    // A prepared CREATE USER / ALTER USER takes its password as a parameter.
    let named_text = stmt_id.and_then(|id| s.tracked.binary.get(&id));
    if named_text.is_some_and(|t| is_sensitive(t)) {
        sink.counters.filtered.fetch_add(1, Relaxed);
        return Ok(());
    }
    // The change of user carries the client's auth data: kept as the state reset it causes.
    let payload = if command == cmd::CHANGE_USER {
        vec![cmd::RESET_CONNECTION]
    } else {
        payload.to_vec()
    };
    let mut before = Vec::new();
    {
        let mut seen = sink.seen.lock().unwrap_or_else(|e| e.into_inner());
        let first = !seen.contains_key(&conn);
        let stmts = seen.entry(conn).or_default();
        if first {
            sink.counters.sessions.fetch_add(1, Relaxed);
            before.push(Record::Session {
                conn,
                at_ns,
                user: s.user.clone(),
                init: s
                    .tracked
                    .settings
                    .statements()
                    .map(<[u8]>::to_vec)
                    .collect(),
            });
        }
        if let Some(id) = stmt_id {
            if command != cmd::STMT_CLOSE && stmts.insert(id) {
                if let Some(text) = named_text {
                    before.push(Record::Prepared {
                        conn,
                        at_ns,
                        id,
                        text: text.to_vec(),
                    });
                }
            }
            if command == cmd::STMT_CLOSE {
                stmts.remove(&id);
            }
        }
        match command {
            cmd::QUIT => {
                seen.remove(&conn);
            }
            cmd::CHANGE_USER | cmd::RESET_CONNECTION => stmts.clear(),
            _ => {}
        }
    }
    for r in before {
        sink.send(r);
    }
    sink.send(Record::Command {
        conn,
        at_ns,
        payload,
    });
    Ok(())
}

/// Checks the request, then starts the capture and its writer thread.
pub fn start(traffic: &Arc<Traffic>, cfg: CaptureConfig) -> Result<Arc<Job>, StartError> {
    traffic.jobs.ensure_idle()?;
    let invalid = |m: String| Err(StartError::Invalid(m));
    if cfg.output.is_empty() {
        return invalid("output is required".into());
    }
    if cfg.output.contains("://") {
        return invalid(format!(
            "output {:?}: only a local directory is supported, not external storage",
            cfg.output
        ));
    }
    if cfg.duration.is_zero() {
        return invalid("duration is required".into());
    }
    let key = match cfg.encryption_method.to_ascii_lowercase().as_str() {
        "" | "plaintext" => None,
        cipher::AES256_CTR => match Key::load(&cfg.key_path) {
            Ok(k) => Some(k),
            Err(e) => return invalid(e.to_string()),
        },
        other => return invalid(format!("unsupported encryption-method {other:?}")),
    };
    let now = SystemTime::now();
    let start_time = cfg.start_time.unwrap_or(now);
    if start_time > now + Duration::from_secs(60) {
        return invalid("start time should not be in the future".into());
    }
    if start_time + cfg.duration < now {
        return invalid("start time should not be in the past".into());
    }
    let dir = PathBuf::from(&cfg.output);
    // Captured SQL holds the application's data: readable by the proxy's user only.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            StartError::Io(format!(
                "cannot create the output directory {}: {e}",
                dir.display()
            ))
        })?;
    if dir.join(META_FILE).exists() {
        return invalid(format!(
            "{} already holds a capture (its {META_FILE} file exists); remove it or choose another output",
            dir.display()
        ));
    }
    let details = json!({
        "output": cfg.output,
        "duration": go_duration_string(cfg.duration),
        "compress": cfg.compress,
    });
    let Some(details) = details.as_object().cloned() else {
        return Err(StartError::Io("job details".into()));
    };
    let job = traffic
        .jobs
        .admit(Job::new(JobKind::Capture, start_time, details))?;
    let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
    let counters = Arc::new(Counters::default());
    let encrypted = key.is_some();
    let writer = Writer::new(&dir, cfg.compress, key);
    let run = Run {
        traffic: traffic.clone(),
        job: job.clone(),
        rx,
        counters: counters.clone(),
        started: Instant::now(),
        start_time,
        duration: cfg.duration,
        dir,
        compress: cfg.compress,
        encrypted,
    };
    traffic.set_sink(Some(Arc::new(Sink {
        tx,
        seen: Mutex::new(Seen::new()),
        counters,
    })));
    let spawned = std::thread::Builder::new()
        .name("traffic-capture".into())
        .spawn(move || run.write(writer));
    if let Err(e) = spawned {
        traffic.set_sink(None);
        job.fail(format!("cannot start the writer thread: {e}"));
        job.finish();
        return Err(StartError::Io(format!(
            "cannot start the writer thread: {e}"
        )));
    }
    info!(output = %cfg.output, duration = ?cfg.duration, compress = cfg.compress, "traffic capture started");
    Ok(job)
}

struct Run {
    traffic: Arc<Traffic>,
    job: Arc<Job>,
    rx: Receiver<Record>,
    counters: Arc<Counters>,
    started: Instant,
    start_time: SystemTime,
    duration: Duration,
    dir: PathBuf,
    compress: bool,
    encrypted: bool,
}

impl Run {
    fn write(self, mut writer: Writer) {
        let deadline = self.started + self.duration;
        let mut failed = None;
        loop {
            self.report();
            let now = Instant::now();
            if now >= deadline || self.job.cancel.is_cancelled() {
                break;
            }
            match self.rx.recv_timeout(TICK.min(deadline - now)) {
                Ok(r) => {
                    if let Err(e) = self.put(&mut writer, &r) {
                        failed = Some(e);
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // No new commands from here; what sessions already sent is still written.
        self.traffic.set_sink(None);
        let drain_until = Instant::now() + DRAIN;
        while failed.is_none() {
            let left = drain_until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(r) => failed = self.put(&mut writer, &r).err(),
                Err(_) => break,
            }
        }
        // Sessions still holding the sink past the drain: counted, never written.
        while let Ok(_late) = self.rx.try_recv() {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
        let outcome = writer.finish().and_then(|files| {
            let meta = self.meta(files);
            meta.write(&self.dir).map(|()| meta)
        });
        match (failed, outcome) {
            (None, Ok(meta)) => {
                info!(output = %self.dir.display(), cmds = meta.cmds, filtered = meta.filtered_cmds, dropped = meta.dropped_cmds, "traffic capture finished");
            }
            (Some(e), _) | (None, Err(e)) => {
                warn!(output = %self.dir.display(), error = %e, "traffic capture failed");
                self.job
                    .fail(format!("writing the traffic files failed: {e}"));
            }
        }
        self.report();
        self.job.finish();
    }

    fn put(&self, writer: &mut Writer, r: &Record) -> std::io::Result<()> {
        writer.write(r)?;
        if matches!(r, Record::Command { .. }) {
            self.counters.cmds.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    fn report(&self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.job
            .set_fraction(elapsed / self.duration.as_secs_f64().max(f64::MIN_POSITIVE));
        let c = &self.counters;
        self.job.set_counter("cmds", c.cmds.load(Relaxed));
        self.job
            .set_counter("filtered_cmds", c.filtered.load(Relaxed));
        self.job
            .set_counter("dropped_cmds", c.dropped.load(Relaxed));
        self.job.set_counter("sessions", c.sessions.load(Relaxed));
    }

    fn meta(&self, files: Vec<String>) -> Meta {
        let c = &self.counters;
        Meta {
            version: VERSION.into(),
            start_time: jobs::rfc3339(self.start_time),
            duration_ns: self.started.elapsed().as_nanos() as u64,
            cmds: c.cmds.load(Relaxed),
            filtered_cmds: c.filtered.load(Relaxed),
            dropped_cmds: c.dropped.load(Relaxed),
            sessions: c.sessions.load(Relaxed),
            compress: self.compress,
            encryption_method: if self.encrypted {
                cipher::AES256_CTR.into()
            } else {
                String::new()
            },
            files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, rx) = sync_channel(2);
        let sink = Sink {
            tx,
            seen: Mutex::default(),
            counters: Arc::default(),
        };
        let rec = || Record::Command {
            conn: 1,
            at_ns: 1,
            payload: vec![cmd::PING],
        };
        assert!(sink.send(rec()));
        assert!(sink.send(rec()));
        assert!(
            !sink.send(rec()),
            "the third does not fit and is not waited for"
        );
        assert_eq!(sink.counters.dropped.load(Relaxed), 1);
        drop(rx);
        assert!(!sink.send(rec()));
        assert_eq!(
            sink.counters.dropped.load(Relaxed),
            1,
            "a closed queue is not a drop"
        );
    }
}
