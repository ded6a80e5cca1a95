//! TiProxy's `/debug/pprof/` group (also under `/api/debug/pprof/`), answered with what this
//! process really has: a sampled CPU profile in pprof's format, its threads in place of
//! goroutines, the allocator's totals in place of a heap profile, and its argv. Profiles Go
//! alone can make (block, mutex, trace, ...) answer 501 saying so. Every path here is an admin
//! path (`access` leaves them closed): they show process internals and a profile costs CPU.

mod cpu;
mod process;
mod proto;

use super::{ApiState, Body};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION};
use hyper::{Method, Response, StatusCode};
use std::net::SocketAddr;
use tracing::{info, warn};

const TEXT: &str = "text/plain; charset=utf-8";

/// Go's profiles that have no counterpart in this process, and why.
const NOT_HERE: [(&str, &str); 6] = [
    ("block", "there are no goroutines to block; waits show in the CPU profile's absence of samples and in the latency histograms of /metrics"),
    ("mutex", "lock contention is not sampled in this process"),
    ("threadcreate", "threads are created once at start (goroutine?debug=1 lists them)"),
    ("trace", "there is no Go execution tracer; use `perf record -g -p <pid>` or a CPU profile"),
    ("symbol", "profiles are served with function names already resolved"),
    ("goroutine", "there are no goroutine stacks to encode; goroutine?debug=1 lists the process's threads as text"),
];

/// Serves a path under `/debug/pprof` or `/api/debug/pprof`.
pub async fn serve(
    state: &ApiState,
    method: &Method,
    uri: &hyper::Uri,
    peer: SocketAddr,
) -> Response<Body> {
    let path = uri.path();
    let query = uri.query();
    let Some((_, sub)) = path.split_once("/pprof") else {
        return failure(StatusCode::NOT_FOUND, format!("no such path: {path}"));
    };
    if sub.is_empty() {
        // The index's links are relative, as Go's are: they need the trailing slash.
        let mut r = reply(StatusCode::MOVED_PERMANENTLY, TEXT, "");
        if let Ok(to) = HeaderValue::from_str(&format!("{path}/")) {
            r.headers_mut().insert(LOCATION, to);
        }
        return r;
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not served on the pprof paths; use GET"),
        );
    }
    let debug = query_value(query, "debug").is_some_and(|v| v != "0");
    match sub.trim_start_matches('/').trim_end_matches('/') {
        "" => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "cmdline" => reply(StatusCode::OK, TEXT, process::cmdline()),
        "profile" => profile(query, peer).await,
        "goroutine" if debug => {
            let rt = tokio::runtime::Handle::current().metrics();
            let tasks = process::Tasks {
                sessions: state.ctx.active_sessions(),
                status_runtime_tasks: rt.num_alive_tasks(),
                status_runtime_workers: rt.num_workers(),
            };
            reply(StatusCode::OK, TEXT, process::threads_text(&tasks))
        }
        "heap" | "allocs" if debug => reply(StatusCode::OK, TEXT, process::heap_text()),
        "heap" | "allocs" => failure(
            StatusCode::NOT_IMPLEMENTED,
            "there is no heap profile: this proxy is not a Go program and its allocator does not \
             sample allocation stacks; heap?debug=1 shows the allocator's totals as text, and \
             /metrics has process_resident_memory_bytes and go_memory_classes_heap_objects_bytes",
        ),
        name => match NOT_HERE.iter().find(|(n, _)| *n == name) {
            Some((_, why)) => failure(
                StatusCode::NOT_IMPLEMENTED,
                format!("no {name} profile: this proxy is not a Go program: {why}"),
            ),
            None => failure(StatusCode::NOT_FOUND, format!("Unknown profile: {name}")),
        },
    }
}

async fn profile(query: Option<&str>, peer: SocketAddr) -> Response<Body> {
    let seconds = match cpu::parse_seconds(query) {
        Ok(s) => s,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e.to_string()),
    };
    info!(client = %peer, seconds, "CPU profile started");
    match cpu::profile(seconds).await {
        Ok(gz) => {
            info!(client = %peer, seconds, bytes = gz.len(), "CPU profile served");
            let mut r = reply(StatusCode::OK, "application/octet-stream", gz);
            r.headers_mut().insert(
                CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"profile\""),
            );
            r
        }
        Err(e @ cpu::CpuError::Busy) => failure(StatusCode::CONFLICT, e.to_string()),
        Err(e) => {
            warn!(client = %peer, error = %e, "CPU profile failed");
            failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// An error as Go's pprof handlers send it: plain text marked `X-Go-Pprof`, which makes
/// `go tool pprof` print the sentence instead of only the status.
fn failure(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut r = reply(status, TEXT, format!("{}\n", message.into()));
    r.headers_mut()
        .insert("x-go-pprof", HeaderValue::from_static("1"));
    r
}

const INDEX: &str = r#"<!DOCTYPE html>
<html><head><title>/debug/pprof/</title></head><body>
<h1>/debug/pprof/</h1>
<p>tiproxy is not a Go program: these are the profiles this process can give, in Go's formats where they exist.</p>
<table>
<tr><td><a href="profile?seconds=30">profile</a></td><td>CPU profile of the whole process (pprof format, gzip'd; <code>seconds</code> 1 to 300, default 30; one at a time). Read it with <code>go tool pprof</code>.</td></tr>
<tr><td><a href="goroutine?debug=1">goroutine?debug=1</a></td><td>The process's OS threads with state and CPU time, and the count of client sessions (text; there are no goroutines).</td></tr>
<tr><td><a href="heap?debug=1">heap?debug=1</a></td><td>The C allocator's totals and the process's memory (text). No sampled heap profile exists, so <code>heap</code> without <code>debug</code> answers 501.</td></tr>
<tr><td><a href="allocs?debug=1">allocs?debug=1</a></td><td>The same as heap?debug=1.</td></tr>
<tr><td><a href="cmdline">cmdline</a></td><td>The command line, arguments separated by NUL bytes.</td></tr>
</table>
<p>block, mutex, threadcreate, trace and symbol answer 501 with the reason.</p>
</body></html>
"#;
