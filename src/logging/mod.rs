//! Logging: the global tracing subscriber, its encoders, output file and runtime level.

mod fields;
mod format;
pub mod rate;
mod rotate;

use crate::config::{normalize_log_level, LogConfig};
use format::{JsonFields, JsonFormat, TidbFields, TidbFormat};
use rotate::{RotateOpts, RotatingFile, SharedFile};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// Dependencies that are noisy at debug level; they stay at warn (or error, if the
/// configured level is stricter) whatever the proxy's own level is.
const QUIET_DEPS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "etcd_client",
    "rustls",
    "tokio_util",
    "mio",
];

const DEFAULT_MAX_SIZE_MB: u64 = 300;

#[derive(thiserror::Error, Debug)]
pub enum LogError {
    #[error("invalid log level {0:?}: expected one of trace, debug, info, warn, error")]
    InvalidLevel(String),
    #[error("invalid log encoder {0:?}: expected one of tidb, json, console")]
    InvalidEncoder(String),
    #[error("invalid log filter: {0}")]
    Filter(String),
    #[error("cannot open log file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the global logger is already installed: {0}")]
    AlreadyInitialized(String),
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Keeps what the running logger needs and lets the level change at runtime.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    /// Switch the level (hot reload of `log.level`); dependency directives are kept.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let f = build_filter(level)?;
        self.filter
            .reload(f)
            .map_err(|e| LogError::Reload(e.to_string()))
    }
}

/// The configured level for everything, plus the fixed directives quieting dependencies.
pub fn build_filter(level: &str) -> Result<EnvFilter, LogError> {
    let lvl = normalize_log_level(level).ok_or_else(|| LogError::InvalidLevel(level.into()))?;
    let deps = if lvl == "error" { "error" } else { "warn" };
    let mut directives = lvl.to_string();
    for d in QUIET_DEPS {
        directives.push_str(&format!(",{d}={deps}"));
    }
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| LogError::Filter(e.to_string()))
}

/// Install the global subscriber. Call once per process; a second call fails.
pub fn init(cfg: &LogConfig) -> Result<LogHandle, LogError> {
    let (writer, is_tty) = open_writer(cfg)?;
    let (subscriber, handle) = build(cfg, writer, is_tty)?;
    subscriber
        .try_init()
        .map_err(|e| LogError::AlreadyInitialized(e.to_string()))?;
    Ok(handle)
}

/// stdout, or ONLY the file when one is configured: TiUP playground redirects our
/// stdout into that same file, so writing both would duplicate every line.
fn open_writer(cfg: &LogConfig) -> Result<(BoxMakeWriter, bool), LogError> {
    let f = &cfg.log_file;
    if f.filename.is_empty() {
        return Ok((
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ));
    }
    Ok((open_rotating(&f.filename, f)?, false))
}

/// A rotating file writer at `filename`, rotated per `[log.log-file]`.
fn open_rotating(
    filename: &str,
    f: &crate::config::LogFileConfig,
) -> Result<BoxMakeWriter, LogError> {
    let mb = if f.max_size == 0 {
        DEFAULT_MAX_SIZE_MB
    } else {
        f.max_size
    };
    let opts = RotateOpts {
        max_size_bytes: mb.saturating_mul(1024 * 1024),
        max_backups: f.max_backups,
        max_days: f.max_days,
    };
    let path = PathBuf::from(filename);
    let file = RotatingFile::open(&path, opts).map_err(|source| LogError::Io { path, source })?;
    Ok(BoxMakeWriter::new(SharedFile(Arc::new(Mutex::new(file)))))
}

/// The tracing target of query-error events, which `[log.query-error-file]` can divert.
pub const QUERY_ERROR_TARGET: &str = "query_error";

fn is_query_error(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == QUERY_ERROR_TARGET
}

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The subscriber without installing it, so tests can scope it with `with_default`.
fn build(
    cfg: &LogConfig,
    writer: BoxMakeWriter,
    ansi: bool,
) -> Result<(impl Subscriber + Send + Sync, LogHandle), LogError> {
    let (filter, handle) = reload::Layer::new(build_filter(&cfg.level)?);
    let qfile = &cfg.query_error_file.filename;
    let output = encoder_layer(&cfg.encoder, writer, ansi)?;
    let outputs: Vec<Box<dyn Layer<Filtered> + Send + Sync>> = if qfile.is_empty() {
        vec![output]
    } else {
        let qwriter = open_rotating(qfile, &cfg.log_file)?;
        let q = encoder_layer(&cfg.encoder, qwriter, false)?;
        vec![
            output
                .with_filter(filter_fn(|m| !is_query_error(m)))
                .boxed(),
            q.with_filter(filter_fn(is_query_error)).boxed(),
        ]
    };
    let subscriber = Registry::default().with(filter).with(outputs);
    Ok((subscriber, LogHandle { filter: handle }))
}

fn encoder_layer(
    encoder: &str,
    writer: BoxMakeWriter,
    ansi: bool,
) -> Result<Box<dyn Layer<Filtered> + Send + Sync>, LogError> {
    Ok(match encoder.to_ascii_lowercase().as_str() {
        "" | "tidb" => fmt::layer()
            .fmt_fields(TidbFields)
            .event_format(TidbFormat)
            .with_writer(writer)
            .boxed(),
        "json" => fmt::layer()
            .fmt_fields(JsonFields)
            .event_format(JsonFormat)
            .with_writer(writer)
            .boxed(),
        "console" => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
        other => return Err(LogError::InvalidEncoder(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn run(level: &str, encoder: &str, f: impl FnOnce(&LogHandle)) -> String {
        let cap = Capture::default();
        let c2 = cap.clone();
        let cfg = LogConfig {
            level: level.into(),
            encoder: encoder.into(),
            ..Default::default()
        };
        let (sub, handle) = build(&cfg, BoxMakeWriter::new(move || c2.clone()), false).unwrap();
        tracing::subscriber::with_default(sub, || f(&handle));
        cap.text()
    }

    #[test]
    fn tidb_line_shape() {
        let out = run("info", "tidb", |_| {
            let span = tracing::info_span!("session", conn = 12u64);
            let _g = span.enter();
            tracing::info!(backend = "127.0.0.1:4000", "message text");
            tracing::warn!(err = "timed out", "retry");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let l = lines[0];
        // [2026/11/23 20:51:31.123 +00:00]
        assert_eq!(&l[0..1], "[");
        assert_eq!(l.as_bytes()[5], b'/');
        assert_eq!(&l[24..25], " ");
        assert!(l[25..].starts_with('+') || l[25..].starts_with('-'), "{l}");
        let rest = &l[l.find("] ").unwrap() + 2..];
        assert!(rest.starts_with("[INFO] [mod.rs:"), "{rest}");
        assert!(
            rest.ends_with("] [\"message text\"] [backend=127.0.0.1:4000] [conn=12]"),
            "{rest}"
        );
        assert!(lines[1].contains("[WARN]") && lines[1].contains("[retry] [err=\"timed out\"]"));
    }

    #[test]
    fn json_line_shape() {
        let out = run("info", "json", |_| {
            let span = tracing::info_span!("session", conn = 7u64);
            let _g = span.enter();
            tracing::error!(backend = "b:1", ok = true, "dial \"failed\"");
        });
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "dial \"failed\"");
        assert_eq!(v["backend"], "b:1");
        assert_eq!(v["ok"], true);
        assert_eq!(v["conn"], 7);
        assert!(v["caller"].as_str().unwrap().starts_with("mod.rs:"));
        assert!(v["time"].as_str().unwrap().len() >= 23);
    }

    #[test]
    fn console_encoder_works() {
        let out = run("info", "console", |_| tracing::info!(a = 1, "hello"));
        assert!(out.contains("hello") && out.contains("a=1"), "{out}");
    }

    #[test]
    fn filter_quiets_deps_and_reloads() {
        let out = run("debug", "tidb", |h| {
            tracing::debug!(target: "h2::codec", "chatty");
            tracing::warn!(target: "h2::codec", "h2 warning");
            tracing::debug!("ours at debug");
            h.set_level("warning").unwrap();
            tracing::info!("hidden after reload");
            tracing::warn!("shown after reload");
            assert!(h.set_level("loud").is_err());
        });
        assert!(!out.contains("chatty"), "{out}");
        assert!(out.contains("h2 warning"));
        assert!(out.contains("ours at debug"));
        assert!(!out.contains("hidden after reload"));
        assert!(out.contains("shown after reload"));
    }

    #[test]
    fn build_filter_directives() {
        let f = build_filter("DEBUG").unwrap().to_string();
        assert!(f.contains("h2=warn") && f.contains("etcd_client=warn") && f.contains("debug"));
        let f = build_filter("error").unwrap().to_string();
        assert!(f.contains("rustls=error"), "deps never louder than us: {f}");
        assert!(build_filter("loud").is_err());
    }

    #[test]
    fn file_output_only_and_bad_encoder() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("logs/tiproxy.log");
        let mut cfg = LogConfig::default();
        cfg.log_file.filename = path.to_string_lossy().into_owned();
        let (w, tty) = open_writer(&cfg).unwrap();
        assert!(!tty);
        let (sub, _h) = build(&cfg, w, false).unwrap();
        tracing::subscriber::with_default(sub, || tracing::info!("to the file"));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("[\"to the file\"]"));
        cfg.encoder = "xml".into();
        let (w, _) = open_writer(&cfg).unwrap();
        assert!(matches!(
            build(&cfg, w, false),
            Err(LogError::InvalidEncoder(_))
        ));
    }
}
