//! TiProxy's `/api/traffic/{capture,replay,show,cancel}`: form parameters as TiProxy takes
//! them, answered with TiProxy's texts and JSON. Admin paths: the access rules apply first.

use crate::proxy::traffic::capture::{self, CaptureConfig};
use crate::proxy::traffic::jobs::{parse_go_duration, JobKind, StartError};
use crate::proxy::traffic::replay::{self, ReplayConfig};
use crate::proxy::ProxyContext;
use hyper::{Method, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::{info, warn};
use zeroize::Zeroizing;

pub enum Answer {
    /// TiProxy's plain-text answer.
    Text(StatusCode, String),
    Json(StatusCode, Value),
    Error(StatusCode, String),
}

/// The form fields of a request body, as TiProxy reads them (never the query string, where a
/// replay password would end up in shell histories and access logs).
struct Form(HashMap<String, Zeroizing<String>>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        let mut m = HashMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            m.insert(k.into_owned(), Zeroizing::new(v.into_owned()));
        }
        Form(m)
    }

    fn get(&self, k: &str) -> &str {
        self.0.get(k).map_or("", |v| v.as_str())
    }

    fn take(&mut self, k: &str) -> Zeroizing<String> {
        self.0.remove(k).unwrap_or_default()
    }

    fn is_true(&self, k: &str) -> bool {
        self.get(k).eq_ignore_ascii_case("true")
    }
}

fn bad(m: impl Into<String>) -> Answer {
    Answer::Error(StatusCode::BAD_REQUEST, m.into())
}

fn start_error(e: StartError) -> Answer {
    match e {
        StartError::Invalid(m) => bad(m),
        e @ StartError::Busy(_) => Answer::Error(StatusCode::CONFLICT, e.to_string()),
        StartError::Io(m) => Answer::Error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// Go's strconv.ParseBool.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_time(name: &str, s: &str) -> Result<Option<SystemTime>, Answer> {
    if s.is_empty() {
        return Ok(None);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| Some(SystemTime::from(t)))
        .map_err(|e| bad(format!("{name} {s:?} is not an RFC 3339 time: {e}")))
}

/// `key_path` is `security.encryption-key-path`, for encrypted captures and their replays.
pub async fn handle(
    ctx: &Arc<ProxyContext>,
    key_path: &str,
    method: &Method,
    path: &str,
    body: &[u8],
    peer: SocketAddr,
    who: &str,
) -> Answer {
    let action = path.strip_prefix("/api/traffic").unwrap_or("");
    let form = Form::parse(body);
    match (method, action) {
        (&Method::POST, "/capture") => {
            let answer = start_capture(ctx, &form, key_path);
            if let Answer::Text(..) = answer {
                info!(client = %peer, who, output = form.get("output"), duration = form.get("duration"), "audit: API started a traffic capture");
            }
            answer
        }
        (&Method::POST, "/replay") => {
            let input = form.get("input").to_owned();
            let user = form.get("username").to_owned();
            let answer = start_replay(ctx, form, key_path);
            match &answer {
                Answer::Text(..) => {
                    info!(client = %peer, who, input = %input, username = %user, "audit: API started a traffic replay")
                }
                Answer::Error(_, e) => {
                    warn!(client = %peer, who, input = %input, error = %e, "audit: API traffic replay refused")
                }
                Answer::Json(..) => {}
            }
            answer
        }
        (&Method::POST, "/cancel") => {
            let only = match form.get("type").to_ascii_lowercase().as_str() {
                "capture" => Some(JobKind::Capture),
                "replay" => Some(JobKind::Replay),
                _ => None,
            };
            if !form.get("timeout").is_empty() {
                if let Err(e) = parse_go_duration(form.get("timeout")) {
                    return bad(e.to_string());
                }
            }
            let result = ctx.traffic.jobs.cancel(only).await;
            info!(client = %peer, who, result = %result, "audit: API traffic cancel");
            Answer::Text(StatusCode::OK, result)
        }
        (&Method::GET | &Method::HEAD, "/show") => {
            Answer::Json(StatusCode::OK, ctx.traffic.jobs.show())
        }
        (_, "/capture" | "/replay" | "/cancel" | "/show") => Answer::Error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not served on {path}"),
        ),
        _ => Answer::Error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

fn start_capture(ctx: &Arc<ProxyContext>, form: &Form, key_path: &str) -> Answer {
    let duration = match form.get("duration") {
        "" => Default::default(),
        d => match parse_go_duration(d) {
            Ok(d) => d,
            Err(e) => return bad(e.to_string()),
        },
    };
    let compress = match form.get("compress") {
        "" => true,
        c => match parse_bool(c) {
            Some(b) => b,
            None => return bad(format!("compress {c:?} is not a boolean")),
        },
    };
    // TiProxy's form field is encrypt-method; its tiproxyctl flag is encryption-method.
    let encryption_method = match form.get("encrypt-method") {
        "" => form.get("encryption-method"),
        m => m,
    }
    .to_owned();
    let start_time = match parse_time("start-time", form.get("start-time")) {
        Ok(t) => t,
        Err(a) => return a,
    };
    let cfg = CaptureConfig {
        output: form.get("output").to_owned(),
        duration,
        compress,
        encryption_method,
        key_path: key_path.to_owned(),
        start_time,
    };
    match capture::start(&ctx.traffic, cfg) {
        Ok(_) => Answer::Text(StatusCode::OK, "capture started".into()),
        Err(e) => start_error(e),
    }
}

/// TiProxy replay options this proxy does not have, and the value that means "not used".
const UNSUPPORTED_REPLAY_OPTIONS: &[(&str, &str)] = &[
    ("cmdstarttime", ""),
    ("cmdendtime", ""),
    ("checkpointpath", ""),
    ("dynamicinput", "false"),
    ("replayercount", ""),
    ("replayerindex", ""),
    ("outputpath", ""),
    ("addr", ""),
    ("dryrun", "false"),
    ("filtercommandwithretry", "false"),
    ("user-allowlist", ""),
    ("wait-on-eof", "false"),
    // Skipping records that do not decode: ours have no point to pick up again after one.
    ("ignore-errs", "false"),
];

fn start_replay(ctx: &Arc<ProxyContext>, mut form: Form, key_path: &str) -> Answer {
    for (name, unused) in UNSUPPORTED_REPLAY_OPTIONS {
        let v = form.get(name);
        if !v.is_empty() && !v.eq_ignore_ascii_case(unused) {
            return bad(format!(
                "replay option {name} is not supported by this proxy (see docs/traffic.md)"
            ));
        }
    }
    match form.get("format") {
        "" | "native" => {}
        f => {
            return bad(format!(
                "format {f:?} is not supported: this proxy replays only its own captures"
            ))
        }
    }
    match form.get("ps-close") {
        "" | "directed" => {}
        p => return bad(format!("ps-close {p:?} is not supported; only directed is")),
    }
    let speed = match form.get("speed") {
        "" => 0.0,
        s => match s.parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => return bad(format!("speed {s:?} is not a number")),
        },
    };
    let start_time = match parse_time("start-time", form.get("start-time")) {
        Ok(t) => t,
        Err(a) => return a,
    };
    let read_only = form.is_true("readonly") || form.is_true("read-only");
    let cfg = ReplayConfig {
        input: form.get("input").to_owned(),
        username: form.get("username").to_owned(),
        password: form.take("password"),
        speed,
        read_only,
        start_time,
        key_path: key_path.to_owned(),
    };
    match replay::start(ctx, cfg) {
        Ok(_) => Answer::Text(StatusCode::OK, "replay started".into()),
        Err(e) => start_error(e),
    }
}
