//! Request routing and the handlers of every status-port path.

use super::{access, auth, dashboard, tiproxy_paths, ApiState, Body};
use crate::balance::BackendSelector;
use crate::config::merge_partial;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{info, warn};

/// Largest config body accepted by PUT; a config file is a few KiB.
const MAX_BODY: usize = 1 << 20;

const JSON: &str = "application/json";

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, v: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    reply(status, JSON, body)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_reply(status, &json!({ "error": message.into() }))
}

pub async fn handle(state: &ApiState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    // TiProxy serves its debug group both under /api and at the root.
    let path = match path.strip_prefix("/debug") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/api/debug{rest}"),
        _ => path,
    };
    if !access::is_open(req.method(), &path) {
        if let Some(refusal) = admit(state, &req, &path, peer) {
            return refusal;
        }
    }
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/api/debug/health") => health(state),
        (Method::PUT, "/api/debug/health") => put_health(state, req, peer).await,
        (Method::DELETE, "/api/debug/health") => {
            let was = state.manual_health.clear();
            info!(client = %peer, who = %caller(state), cleared = was, "audit: API cleared the manual health override");
            json_reply(StatusCode::OK, &"")
        }
        (Method::POST, "/api/debug/redirect") => {
            let n = tiproxy_paths::redirect_all(&state.ctx);
            info!(client = %peer, who = %caller(state), requested = n, "audit: API asked every session to be routed again");
            json_reply(StatusCode::OK, &json!({ "requested": n }))
        }
        (Method::GET, "/api/backend/metrics") => {
            json_reply(StatusCode::OK, &tiproxy_paths::backend_metrics(&state.ctx))
        }
        (_, p) if p == "/api/traffic" || p.starts_with("/api/traffic/") => {
            traffic_path(state, req, peer, &path).await
        }
        (_, p) if p == "/api/admin/namespace" || p.starts_with("/api/admin/namespace/") => {
            namespace_path(state, req, peer, &path).await
        }
        (m, p) if p == "/api/debug/pprof" || p.starts_with("/api/debug/pprof/") => {
            super::pprof::serve(state, &m, req.uri(), peer).await
        }
        (Method::GET, "/api/metrics" | "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.ctx.metrics.render(),
        ),
        (Method::GET, "/api/admin/config") => get_config(state, &req, peer),
        (Method::PUT, "/api/admin/config") => put_config(state, req, peer).await,
        (Method::GET, "/api/backends") => json_reply(StatusCode::OK, &backends(state)),
        (Method::GET, "/api/connections") => json_reply(
            StatusCode::OK,
            &json!({ "connections": state.ctx.registry.list() }),
        ),
        (Method::GET, "/api/events") => json_reply(
            StatusCode::OK,
            &json!({ "events": state.ctx.events.recent() }),
        ),
        (Method::GET, "/api/info") => json_reply(StatusCode::OK, &info(state)),
        (Method::GET, "/api/stats/history") => {
            let ms = super::stats::INTERVAL.as_millis() as u64;
            json_reply(StatusCode::OK, &state.stats.history.snapshot(ms))
        }
        (Method::POST, "/api/admin/migrate") => {
            let params = super::migrate::parse_query(req.uri().query().unwrap_or_default());
            match super::migrate::request(&state.ctx, &params) {
                Ok(r) => {
                    info!(client = %peer, who = %caller(state), from = ?params.get("from"), to = ?params.get("to"), session = ?params.get("session"), count = ?params.get("count"), requested = r.requested, "audit: API asked sessions to move");
                    json_reply(StatusCode::OK, &r)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        (Method::GET, "" | "/index.html") => {
            reply(StatusCode::OK, "text/html; charset=utf-8", dashboard::PAGE)
        }
        (_, "/api/debug/health" | "/api/metrics" | "/metrics" | "/api/admin/config")
        | (_, "/api/backends" | "/api/connections" | "/api/events" | "/api/info" | "")
        | (_, "/api/admin/migrate" | "/api/debug/redirect" | "/api/backend/metrics") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

/// Applies the access rules to a path that is not open; Some is the refusal to send.
fn admit(
    state: &ApiState,
    req: &Request<Incoming>,
    path: &str,
    peer: SocketAddr,
) -> Option<Response<Body>> {
    let ip = peer.ip();
    match &state.credentials {
        Some((user, password)) => {
            let now = Instant::now();
            if let Some(wait) = state.auth_failures.blocked(ip, now) {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many failed logins from {ip}; try again in {wait} s"),
                );
                if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                    r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                }
                return Some(r);
            }
            let header = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !auth::allows(header, user, password.expose()) {
                let failures = state.auth_failures.record(ip, now);
                warn!(client = %peer, method = %req.method(), path, credentials_sent = header.is_some(), failures_in_window = failures, "audit: API authentication failed");
                let mut r = error(StatusCode::UNAUTHORIZED, "authentication required");
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tiproxy\""),
                );
                return Some(r);
            }
        }
        None if !access::is_local(ip) => {
            warn!(client = %peer, method = %req.method(), path, "audit: API request refused: no [api] user/password is set, so only callers on this host are served");
            return Some(error(
                StatusCode::FORBIDDEN,
                "this path is served only to callers on the proxy's own host until [api] user and password are set (health, metrics and the redacted config are open)",
            ));
        }
        None => {}
    }
    if access::changes_state(req.method()) {
        let mut known = state.local_names.clone();
        known.extend(state.running.get().api.allowed_hosts.iter().cloned());
        if let Some(why) = access::cross_site(req.headers(), &known) {
            warn!(client = %peer, method = %req.method(), path, reason = %why, "audit: API change refused as cross-site");
            return Some(error(StatusCode::FORBIDDEN, format!("refused: {why}")));
        }
    }
    None
}

/// Who made a request, for audit lines: the basic-auth user, or "local" without auth.
fn caller(state: &ApiState) -> String {
    match &state.credentials {
        Some((user, _)) => user.clone(),
        None => "local (no [api] user)".into(),
    }
}

fn health(state: &ApiState) -> Response<Body> {
    if state.draining.is_cancelled() {
        return json_reply(
            StatusCode::BAD_GATEWAY,
            &json!({ "unhealthy_reason": "the proxy is shutting down" }),
        );
    }
    // An operator's override (TiProxy's PUT /api/debug/health) wins over the backends' state,
    // but never hides a shutdown: a balancer must not keep sending clients to a closing proxy.
    if let Some(o) = state.manual_health.get() {
        let checksum = state.running.get().checksum();
        return if o.healthy {
            json_reply(
                StatusCode::OK,
                &json!({ "config_checksum": checksum, "manual_override": true }),
            )
        } else {
            json_reply(
                StatusCode::BAD_GATEWAY,
                &json!({ "config_checksum": checksum, "unhealthy_reason": o.reason, "manual_override": true }),
            )
        };
    }
    // As TiProxy: 502 while no backend can take a session, so load balancers route around
    // this proxy and `tiup cluster display` shows it down; the reason says what is missing.
    let mut body = json!({ "config_checksum": state.running.get().checksum() });
    let backends = &state.ctx.backends;
    let available = backends
        .snapshot()
        .iter()
        .filter(|b| b.is_healthy())
        .count();
    body["backends_available"] = json!(available);
    if let Some(pd) = backends.pd_status() {
        body["pd_reachable"] = json!(pd.is_reachable());
        if let Some(why) = pd.unreachable_summary() {
            body["pd_error"] = json!(why);
        }
    }
    if available == 0 {
        body["unhealthy_reason"] = json!(backends.unavailable_reason());
        return json_reply(StatusCode::BAD_GATEWAY, &body);
    }
    json_reply(StatusCode::OK, &body)
}

fn wants_json(req: &Request<Incoming>) -> bool {
    let query_json = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
    let accept_json = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(JSON));
    query_json || accept_json
}

/// The running config with every secret shown only as set (`<set>`) or unset (`""`).
/// Whether the caller would pass `admit`, asked without counting or logging a failure (the
/// open config path shows more to an admin, and refuses nobody).
fn is_admin(state: &ApiState, req: &Request<Incoming>, peer: SocketAddr) -> bool {
    match &state.credentials {
        Some((user, password)) => {
            let header = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            auth::allows(header, user, password.expose())
        }
        None => access::is_local(peer.ip()),
    }
}

fn get_config(state: &ApiState, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let config = state.running.get();
    let mut table = match toml::Table::try_from(&*config) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    crate::config::secret::redact(&mut table);
    if !is_admin(state, req, peer) {
        crate::config::secret::redact_identities(&mut table);
    }
    if wants_json(req) {
        return json_reply(StatusCode::OK, &table);
    }
    match toml::to_string(&table) {
        Ok(text) => reply(StatusCode::OK, "application/toml; charset=utf-8", text),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// TiProxy's namespace paths; all of them are admin paths (they name users).
async fn namespace_path(
    state: &ApiState,
    req: Request<Incoming>,
    peer: SocketAddr,
    path: &str,
) -> Response<Body> {
    use super::namespace::{commit_names, NamespaceStore, Outcome};
    let name = path
        .strip_prefix("/api/admin/namespace")
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let method = req.method().clone();
    let outcome = match (&method, name.as_str()) {
        (&Method::GET, "") => {
            return json_reply(StatusCode::OK, &NamespaceStore::list(&state.running))
        }
        (&Method::POST, "commit") => {
            let names = commit_names(req.uri().query());
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| NamespaceStore::get(&state.running, n).is_none())
                .collect();
            if !missing.is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no such namespace: {missing:?}"),
                );
            }
            // A put or del is in effect at once; sessions on a backend outside their group
            // move at their next transaction boundary.
            info!(client = %peer, who = %caller(state), ?names, "audit: API namespace commit");
            return json_reply(StatusCode::OK, &"");
        }
        (&Method::GET, n) => {
            return match NamespaceStore::get(&state.running, n) {
                Some(ns) => json_reply(StatusCode::OK, &ns),
                None => error(StatusCode::NOT_FOUND, format!("no namespace {n:?}")),
            }
        }
        (&Method::PUT, n) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            state.namespaces.put(&state.running, n, &body)
        }
        (&Method::DELETE, n) if !n.is_empty() => state.namespaces.delete(&state.running, n),
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not served on {path}"),
            )
        }
    };
    match outcome {
        Outcome::Done => {
            let persisted = state.namespaces.file().is_some();
            info!(client = %peer, who = %caller(state), %method, namespace = %name, persisted, "audit: API changed the namespaces");
            if !persisted {
                warn!("namespaces changed through the API are not persisted: the proxy was started without a config file");
            }
            json_reply(StatusCode::OK, &"")
        }
        Outcome::NotFound(e) => error(StatusCode::NOT_FOUND, e),
        Outcome::Invalid(e) => {
            warn!(client = %peer, who = %caller(state), error = %e, "audit: API namespace change rejected");
            error(StatusCode::BAD_REQUEST, e)
        }
        Outcome::Storage(e) => {
            warn!(client = %peer, who = %caller(state), error = %e, "audit: API namespace change not applied");
            error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

/// The request body, bounded in size and time; Err is the reply to send.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    match crate::timer::timeout(super::BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                super::BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

async fn put_health(state: &ApiState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.manual_health.set_from_json(&body) {
        Ok(o) => {
            info!(client = %peer, who = %caller(state), healthy = o.healthy, reason = %o.reason, "audit: API set the manual health override");
            json_reply(StatusCode::OK, &"")
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn put_config(state: &ApiState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let who = caller(state);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8 TOML");
    };
    let merged = match merge_partial(&state.running.get(), text) {
        Ok(l) => l,
        Err(e) => {
            warn!(client = %peer, who = %who, error = %e, "audit: API config change rejected");
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    match crate::reload::apply(&state.running, merged.config) {
        Ok(report) => {
            info!(client = %peer, who = %who, changed = ?report.changed, "audit: API changed the config");
            json_reply(
                StatusCode::OK,
                &json!({
                    "changed": report.changed,
                    "applied": report.applied,
                    "restart_required": report.restart_required,
                    "config_checksum": report.config_checksum,
                    "warnings": merged.warnings,
                }),
            )
        }
        Err(e) => {
            warn!(client = %peer, who = %who, error = %e, "audit: API config change rejected");
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

#[derive(Serialize)]
struct BackendView {
    addr: String,
    source: &'static str,
    healthy: bool,
    status: &'static str,
    last_error: String,
    server_version: String,
    sessions: u64,
    /// The balancer's score per factor (docs/balance.md); empty while unavailable.
    scores: std::collections::BTreeMap<&'static str, u32>,
    /// Sessions asked to move off this backend that have not, by what holds them.
    blocked: std::collections::BTreeMap<String, u64>,
    #[serde(flatten)]
    rates: super::stats::Rates,
}

fn backends(state: &ApiState) -> serde_json::Value {
    let route = state.ctx.backends.route_view();
    let mut held = state.ctx.registry.sessions_by_backend();
    let mut blocked = state.ctx.registry.blocked_by_backend();
    let mut list: Vec<BackendView> = state
        .ctx
        .backends
        .snapshot()
        .iter()
        .map(|b| {
            let info = b.info();
            let healthy = b.is_healthy();
            BackendView {
                addr: b.addr.clone(),
                source: b.source().as_str(),
                healthy,
                status: if healthy { "up" } else { "down" },
                last_error: if healthy {
                    String::new()
                } else {
                    info.last_error
                },
                server_version: info.server_version,
                sessions: held.remove(&b.addr).unwrap_or(0),
                scores: route.scores.get(&b.addr).cloned().unwrap_or_default(),
                blocked: blocked.remove(&b.addr).unwrap_or_default(),
                rates: state.stats.rates(&b.addr),
            }
        })
        .collect();
    // Backends gone from the configuration whose sessions have not moved off yet.
    for (addr, sessions) in held {
        list.push(BackendView {
            source: "static",
            healthy: false,
            status: "removed",
            last_error: String::new(),
            server_version: String::new(),
            sessions,
            scores: Default::default(),
            blocked: blocked.remove(&addr).unwrap_or_default(),
            rates: state.stats.rates(&addr),
            addr,
        });
    }
    json!({ "backends": list })
}

fn info(state: &ApiState) -> serde_json::Value {
    let start = state
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "version": crate::version::VERSION,
        "commit": crate::version::GIT_HASH,
        "start_time": start,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "draining": state.draining.is_cancelled(),
        "connections": state.ctx.active_sessions(),
        "config_checksum": state.running.get().checksum(),
    })
}

/// TiProxy's traffic capture and replay paths (admin paths: a replay carries a password).
async fn traffic_path(
    state: &ApiState,
    req: Request<Incoming>,
    peer: SocketAddr,
    path: &str,
) -> Response<Body> {
    use super::traffic::{handle, Answer};
    if !state.running.get().enable_traffic_replay {
        let what = path.rsplit('/').next().unwrap_or("traffic");
        return error(
            StatusCode::BAD_REQUEST,
            format!("traffic {what} is disabled: the config sets enable-traffic-replay = false (set it to true; it reloads without a restart)"),
        );
    }
    let method = req.method().clone();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let who = caller(state);
    let key_path = state.running.get().security.encryption_key_path.clone();
    match handle(&state.ctx, &key_path, &method, path, &body, peer, &who).await {
        Answer::Text(status, text) => reply(status, "text/plain; charset=utf-8", text),
        Answer::Json(status, v) => json_reply(status, &v),
        Answer::Error(status, e) => error(status, e),
    }
}
