//! The traffic jobs: at most one capture or replay runs at a time, and the last ten are kept
//! for `show`, in TiProxy's JSON shape (type, status, start/end time, progress, error).

use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Jobs kept for `show`, as TiProxy.
const HISTORY: usize = 10;
/// How long `cancel` waits for a job to wind down (flush its files, close connections).
const CANCEL_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Capture,
    Replay,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Capture => "capture",
            JobKind::Replay => "replay",
        }
    }
}

/// What a running job reports as it goes.
#[derive(Debug, Default)]
struct Progress {
    fraction: f64,
    end_time: Option<SystemTime>,
    done: bool,
    error: Option<String>,
    counters: Map<String, Value>,
}

pub struct Job {
    pub kind: JobKind,
    pub start_time: SystemTime,
    /// The job's parameters as `show` lists them; never a password.
    details: Map<String, Value>,
    /// Set to stop the job; the job marks itself done once it has stopped.
    pub cancel: CancellationToken,
    progress: Mutex<Progress>,
    finished: tokio::sync::Notify,
}

impl Job {
    pub fn new(kind: JobKind, start_time: SystemTime, details: Map<String, Value>) -> Job {
        Job {
            kind,
            start_time,
            details,
            cancel: CancellationToken::new(),
            progress: Mutex::default(),
            finished: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Progress from 0 to 1; it never goes back.
    pub fn set_fraction(&self, f: f64) {
        let mut p = self.lock();
        if f > p.fraction {
            p.fraction = f.min(1.0);
        }
    }

    /// A figure shown with the job (commands written, replayed, dropped...).
    pub fn set_counter(&self, name: &str, v: impl Into<Value>) {
        self.lock().counters.insert(name.to_owned(), v.into());
    }

    /// Records why the job stops; it keeps running until `finish`, as "stopping". The first
    /// reason given is kept.
    pub fn fail(&self, why: impl Into<String>) {
        let mut p = self.lock();
        if p.error.is_none() {
            p.error = Some(why.into());
        }
        drop(p);
        self.cancel.cancel();
    }

    /// The job has stopped: done when nothing failed and nobody cancelled it.
    pub fn finish(&self) {
        let mut p = self.lock();
        if p.error.is_none() {
            if self.cancel.is_cancelled() {
                p.error = Some("manually stopped".into());
            } else {
                p.fraction = 1.0;
            }
        }
        p.done = true;
        p.end_time = Some(SystemTime::now());
        drop(p);
        self.finished.notify_waiters();
    }

    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Whether the job was cancelled or failed (it may still be winding down).
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub fn to_json(&self) -> Value {
        let p = self.lock();
        let status = match (&p.error, p.done) {
            (Some(_), true) => "canceled",
            (None, true) => "done",
            (Some(_), false) => "stopping",
            (None, false) if self.cancel.is_cancelled() => "stopping",
            (None, false) => "running",
        };
        let mut v = json!({
            "type": self.kind.as_str(),
            "status": status,
            "start_time": rfc3339(self.start_time),
            "progress": format!("{}%", (p.fraction * 100.0).floor() as u32),
        });
        let obj = v.as_object_mut().expect("object");
        if let Some(end) = p.end_time {
            obj.insert("end_time".into(), rfc3339(end).into());
        }
        if let Some(e) = &p.error {
            obj.insert("error".into(), e.clone().into());
        }
        for (k, val) in self.details.iter().chain(p.counters.iter()) {
            obj.insert(k.clone(), val.clone());
        }
        v
    }
}

/// RFC 3339 in local time to the second, as TiProxy shows times.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with nanoseconds, for command timestamps.
pub fn rfc3339_nanos(unix_ns: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_ns);
    chrono::DateTime::<chrono::Local>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Why a job did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request is wrong or asks for what we cannot do; nothing was started.
    #[error("{0}")]
    Invalid(String),
    /// Another job runs; TiProxy runs one at a time.
    #[error("a job is running: {0}")]
    Busy(String),
    /// The request was fine but the output could not be prepared.
    #[error("{0}")]
    Io(String),
}

#[derive(Default)]
pub struct Jobs {
    history: Mutex<VecDeque<Arc<Job>>>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Job>>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Err while a job is still running or stopping: checked before anything else, as TiProxy.
    pub fn ensure_idle(&self) -> Result<(), StartError> {
        match self.lock().back() {
            Some(last) if !last.is_done() => Err(StartError::Busy(last.to_json().to_string())),
            _ => Ok(()),
        }
    }

    /// Adds `job` unless another is still running or stopping.
    pub fn admit(&self, job: Job) -> Result<Arc<Job>, StartError> {
        let mut h = self.lock();
        if let Some(last) = h.back().filter(|l| !l.is_done()) {
            return Err(StartError::Busy(last.to_json().to_string()));
        }
        if h.len() >= HISTORY {
            h.pop_front();
        }
        let job = Arc::new(job);
        h.push_back(job.clone());
        Ok(job)
    }

    /// Every kept job, oldest first.
    pub fn show(&self) -> Value {
        Value::Array(self.lock().iter().map(|j| j.to_json()).collect())
    }

    /// Stops the running job (of `only` kind, when given) and waits a while for it to end;
    /// returns TiProxy's answer text.
    pub async fn cancel(&self, only: Option<JobKind>) -> String {
        let Some(job) = self.lock().back().cloned() else {
            return "no job running".into();
        };
        if job.is_done() {
            return "no job running".into();
        }
        if only.is_some_and(|k| k != job.kind) {
            return "no privilege to stop the job".into();
        }
        let finished = job.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        job.cancel.cancel();
        if !job.is_done() {
            let _ = crate::timer::timeout(CANCEL_WAIT, finished).await;
        }
        format!("stopped: {}", job.to_json())
    }
}

/// A duration form field that is not a Go duration; holds the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. 30s, 10m, 1h30m")]
pub struct BadDuration(pub String);

/// A Go duration string as TiProxy takes it ("90s", "1h30m", "500ms").
pub fn parse_go_duration(s: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration(s.to_owned());
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A duration as Go prints it ("1m30s", "10s", "1h0m0s"), for `show`.
pub fn go_duration_string(d: Duration) -> String {
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let sec = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{:09}", frac);
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => sec,
        (0, m) => format!("{m}m{sec}"),
        (h, m) => format!("{h}h{m}m{sec}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_and_print() {
        assert_eq!(parse_go_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        for bad in ["", "10", "5x", "m", "-1s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(go_duration_string(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration_string(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration_string(Duration::from_millis(1500)), "1.5s");
    }

    #[tokio::test]
    async fn one_job_at_a_time_and_cancel_marks_it_canceled() {
        let jobs = Jobs::default();
        let first = jobs
            .admit(Job::new(JobKind::Capture, SystemTime::now(), Map::new()))
            .unwrap();
        let second = jobs.admit(Job::new(JobKind::Replay, SystemTime::now(), Map::new()));
        assert!(matches!(second, Err(StartError::Busy(_))));
        assert_eq!(
            jobs.cancel(Some(JobKind::Replay)).await,
            "no privilege to stop the job"
        );
        let worker = first.clone();
        tokio::spawn(async move {
            worker.cancel.cancelled().await;
            worker.finish();
        });
        let answer = jobs.cancel(None).await;
        assert!(answer.starts_with("stopped: "), "{answer}");
        let shown = jobs.show();
        assert_eq!(shown[0]["status"], "canceled");
        assert_eq!(shown[0]["error"], "manually stopped");
        assert_eq!(jobs.cancel(None).await, "no job running");
        let third = jobs.admit(Job::new(JobKind::Replay, SystemTime::now(), Map::new()));
        assert!(third.is_ok());
        third.unwrap().finish();
        assert_eq!(jobs.show()[1]["status"], "done");
        assert_eq!(jobs.show()[1]["progress"], "100%");
    }
}
