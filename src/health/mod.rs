//! Backend health probes: a periodic SQL-port check that leaves no trace on the backend
//! (greeting only for TiDB; for MySQL/MariaDB a login with the service account when one is
//! set), TiDB's `GET /status` where its status address is known (probed every 500 ms too, so
//! a graceful shutdown is seen within a second), with failure and recovery thresholds, marking
//! backends up and down for routing.

mod error;
pub mod status;

pub use error::{ProbeError, StatusError};

use crate::balance::{Backend, BackendSet};
use crate::config::{HealthConfig, ServiceAccount};
use crate::events::EventLog;
use crate::protocol::constants::{
    cap, cmd, DEFAULT_COLLATION, EOF_HEADER, ERR_HEADER, NATIVE_PASSWORD_PLUGIN, OK_HEADER,
};
use crate::protocol::handshake::{Greeting, HandshakeResponse};
use crate::protocol::response::ErrPacket;
use crate::protocol::{PacketConn, Stream};
use crate::proxy::migrate::credential::{native_reply, stage1_from_password};
use crate::proxy::migrate::tidb::is_tidb;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The user the SQL probe of a MySQL/MariaDB backend logs in as when no service account is
/// configured. It normally does not exist: "access denied" ends the handshake without counting
/// towards max_connect_errors (hanging up after the greeting counts, and MariaDB blocks the
/// proxy's host after 100 such probes from a non-loopback address), but MariaDB logs a warning
/// for it. Should the user exist without a password, the probe logs in and quits.
pub const PROBE_USER: &str = "tiproxy_health_probe";

/// How often TiDB's `/status` is asked whether a graceful shutdown began.
pub const DRAIN_POLL: Duration = Duration::from_millis(500);

/// Plain capabilities for the probe's login.
const PROBE_CAPS: u32 = cap::LONG_PASSWORD
    | cap::PROTOCOL_41
    | cap::SECURE_CONNECTION
    | cap::PLUGIN_AUTH
    | cap::TRANSACTIONS;

/// What the probes read from the configuration each round.
#[derive(Debug, Clone, Default)]
pub struct ProbeSettings {
    pub health: HealthConfig,
    /// `[proxy.service-account]`: MySQL/MariaDB probes log in with it, which leaves nothing in
    /// the server's log or failed-login counters.
    pub account: ServiceAccount,
    /// `[proxy] backend-status-addrs`: TiDB status addresses of static backends.
    pub status_addrs: BTreeMap<String, String>,
    /// Backends expect a PROXY v2 header first (TiDB with `proxy-protocol.networks` refuses
    /// connections from listed sources without one): probes send a LOCAL header.
    pub proxy_header: bool,
}

impl ProbeSettings {
    /// The status address of `b`: learned from PD, or configured for a static backend.
    pub fn status_addr_of(&self, b: &Backend) -> Option<String> {
        b.status_addr()
            .or_else(|| self.status_addrs.get(&b.addr).cloned())
    }
}

/// One probe of a backend's SQL port: the greeting, then an end that leaves no trace (see
/// `sign_off`). TiDB's `/status` is probed in `status`.
pub async fn probe_sql(
    addr: &str,
    timeout: Duration,
    account: &ServiceAccount,
) -> Result<(String, u32), ProbeError> {
    probe_sql_with(addr, timeout, account, false).await
}

/// `probe_sql`, starting with a PROXY v2 LOCAL header when `proxy_header`.
pub async fn probe_sql_with(
    addr: &str,
    timeout: Duration,
    account: &ServiceAccount,
    proxy_header: bool,
) -> Result<(String, u32), ProbeError> {
    let fut = async {
        let mut tcp = TcpStream::connect(addr).await?;
        if proxy_header {
            use tokio::io::AsyncWriteExt;
            tcp.write_all(&crate::protocol::proxy_protocol::encode_v2_local())
                .await?;
        }
        let mut conn = PacketConn::new(Stream::plain(tcp), 1024);
        let (_, p) = conn.read_packet(64 * 1024).await?;
        if p.first() == Some(&ERR_HEADER) {
            let e = ErrPacket::parse(&p)
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(ProbeError::Greeted(e));
        }
        let g = Greeting::parse(&p).map_err(ProbeError::Malformed)?;
        sign_off(&mut conn, &g, account).await?;
        Ok((g.server_version, g.capabilities))
    };
    match crate::timer::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Ends a connection that has only been greeted (`g`) so the backend records nothing:
/// - TiDB: closed right after the greeting, as the Go TiProxy does (TiDB logs nothing for it);
/// - MySQL/MariaDB with a service account: a login with it and COM_QUIT (only `Connections`
///   moves; hanging up would log "Aborted connection" and count towards max_connect_errors);
/// - MySQL/MariaDB without one: a login as `PROBE_USER`, answered "access denied" (one warning
///   in MariaDB's error log and `Access_denied_errors`, but no host blocking).
pub async fn sign_off(
    conn: &mut PacketConn,
    g: &Greeting,
    account: &ServiceAccount,
) -> Result<(), ProbeError> {
    if is_tidb(&g.server_version) {
        conn.shutdown().await;
        return Ok(());
    }
    let (user, stage1) = if account.user.is_empty() {
        (PROBE_USER, None)
    } else {
        let s1 = (!account.password.is_empty())
            .then(|| stage1_from_password(account.password.as_bytes()));
        (account.user.as_str(), s1)
    };
    let r = login_and_quit(conn, g, user, stage1.as_ref()).await;
    conn.shutdown().await;
    match r {
        Err(LoginEnd::Refused(e)) if !account.user.is_empty() => {
            if !SERVICE_ACCOUNT_WARNED.swap(true, Ordering::Relaxed) {
                warn!(user = %account.user, error = %e, "the health probe cannot log in with [proxy.service-account]; the backend logs each refused probe");
            }
            Ok(())
        }
        // 1045/1698: access denied, the expected answer of a serving server.
        Err(LoginEnd::Refused(e)) if e.code == 1045 || e.code == 1698 => Ok(()),
        Err(LoginEnd::Refused(e)) => Err(ProbeError::LoginRefused(e)),
        Err(LoginEnd::Io(e)) => Err(ProbeError::Io(e)),
        Ok(()) => Ok(()),
    }
}

static SERVICE_ACCOUNT_WARNED: AtomicBool = AtomicBool::new(false);

enum LoginEnd {
    Refused(ErrPacket),
    Io(std::io::Error),
}

/// A mysql_native_password login as `user` (`stage1` = SHA1(password), none = empty), then
/// COM_QUIT on OK.
async fn login_and_quit(
    conn: &mut PacketConn,
    g: &Greeting,
    user: &str,
    stage1: Option<&[u8; 20]>,
) -> Result<(), LoginEnd> {
    let reply = |scramble: &[u8]| {
        stage1
            .map(|s| native_reply(s, scramble))
            .unwrap_or_default()
    };
    let login = HandshakeResponse {
        capabilities: PROBE_CAPS & g.capabilities | cap::PROTOCOL_41,
        max_packet: 1 << 24,
        collation: DEFAULT_COLLATION,
        user: user.as_bytes().to_vec(),
        auth_data: reply(&g.scramble),
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
        ..Default::default()
    };
    let io = LoginEnd::Io;
    conn.write_packet(1, &login.encode()).await.map_err(io)?;
    // Bounded: an auth switch or two, then OK or ERR.
    for _ in 0..3 {
        let (s, p) = conn.read_packet(64 * 1024).await.map_err(io)?;
        match p.first() {
            Some(&OK_HEADER) => {
                let _ = conn.write_packet(0, &[cmd::QUIT]).await;
                return Ok(());
            }
            Some(&ERR_HEADER) => {
                return Err(LoginEnd::Refused(
                    ErrPacket::parse(&p).unwrap_or_else(|| ErrPacket::new(0, "", "")),
                ))
            }
            Some(&EOF_HEADER) => {
                // An auth switch: answered for mysql_native_password, empty otherwise.
                let rest = &p[1..];
                let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                let data = rest.get(nul + 1..).unwrap_or_default();
                let scramble = data.strip_suffix(&[0]).unwrap_or(data);
                let answer = if &rest[..nul] == NATIVE_PASSWORD_PLUGIN.as_bytes() {
                    reply(scramble)
                } else {
                    Vec::new()
                };
                conn.write_packet(s.wrapping_add(1), &answer)
                    .await
                    .map_err(io)?;
            }
            _ => {
                conn.write_packet(s.wrapping_add(1), &[])
                    .await
                    .map_err(io)?;
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Streak {
    fails: u32,
    oks: u32,
    /// The last probe could not run for want of descriptors or memory here (logged once).
    short: bool,
}

fn apply(
    backend: &Backend,
    streak: &mut Streak,
    result: Result<(String, u32), ProbeError>,
    cfg: &HealthConfig,
    events: &EventLog,
) {
    let was_short = std::mem::take(&mut streak.short);
    match result {
        Ok((version, caps)) => {
            backend.record_greeting(&version, caps);
            streak.fails = 0;
            streak.oks = streak.oks.saturating_add(1);
            if streak.oks >= cfg.recovery_threshold.max(1) && backend.mark_healthy() {
                info!(backend = %backend.addr, version = %version, "backend is up");
                events.push("backend-up", format!("backend {} is up", backend.addr));
            }
        }
        Err(err) if err.is_local_shortage() => {
            // The proxy could not even make a socket: the probe says nothing about the
            // backend, so its state and streak stay as they were.
            streak.short = true;
            if !was_short {
                warn!(backend = %backend.addr, error = %err, "health probe not run: this proxy is out of file descriptors or memory; the backend's health is left as it was until a probe can run");
            }
        }
        Err(err) => {
            let reason = err.to_string();
            streak.oks = 0;
            streak.fails = streak.fails.saturating_add(1);
            if streak.fails >= cfg.failure_threshold.max(1) && backend.mark_unhealthy(&reason) {
                warn!(backend = %backend.addr, %reason, "backend is down");
                events.push(
                    "backend-down",
                    format!("backend {} is down: {reason}", backend.addr),
                );
            }
        }
    }
}

/// Probes every backend each interval until `shutdown` fires, and watches the `/status` of
/// TiDBs every `DRAIN_POLL`. `settings` is read every round, so `[health]`, the service account
/// and static status addresses apply without a restart.
pub fn start(
    backends: Arc<BackendSet>,
    settings: impl Fn() -> ProbeSettings + Send + Sync + 'static,
    events: Arc<EventLog>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let settings = Arc::new(settings);
    let drains = tokio::spawn(watch_drains(
        backends.clone(),
        settings.clone(),
        events.clone(),
        shutdown.clone(),
    ));
    let probes = tokio::spawn(async move {
        let mut streaks: HashMap<String, Streak> = HashMap::new();
        loop {
            let probe = settings();
            let cfg = probe.health.clone();
            let interval = Duration::from_millis(cfg.interval_ms.max(10));
            let timeout = Duration::from_millis(cfg.timeout_ms.max(10));
            let round = std::time::Instant::now();
            let list = backends.snapshot();
            let mut probes = JoinSet::new();
            for b in list.iter() {
                let b = b.clone();
                let status_addr = probe.status_addr_of(&b);
                let account = probe.account.clone();
                let proxy_header = probe.proxy_header;
                probes.spawn(async move {
                    let pinged = std::time::Instant::now();
                    let mut r = probe_sql_with(&b.addr, timeout, &account, proxy_header).await;
                    b.metrics.ping.set(pinged.elapsed().as_secs_f64());
                    if let (Ok(_), Some(status_addr)) = (&r, status_addr) {
                        if let Err(e) = status::probe_status(&status_addr, timeout).await {
                            r = Err(e.into());
                        }
                    }
                    (b, r)
                });
            }
            while let Some(joined) = probes.join_next().await {
                if let Ok((b, r)) = joined {
                    let streak = streaks.entry(b.addr.clone()).or_default();
                    apply(&b, streak, r, &cfg, &events);
                }
            }
            streaks.retain(|addr, _| list.iter().any(|b| &b.addr == addr));
            drop(list);
            // A backend that left the list keeps its series until its last session ends.
            for addr in backends.metrics().prune_backends() {
                debug!(backend = %addr, "removed the metric series of a backend no longer in the list");
            }
            backends
                .metrics()
                .health_check_seconds
                .set(round.elapsed().as_secs_f64());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = crate::timer::sleep(interval) => {}
            }
        }
    });
    // One handle for both loops, so the App awaits the drain watcher too.
    tokio::spawn(async move {
        let _ = tokio::join!(drains, probes);
    })
}

/// Every `DRAIN_POLL`, asks each healthy backend with a status address whether it still
/// serves. An HTTP answer other than 200 (TiDB answers 500 from the moment a graceful shutdown
/// begins) marks it down at once, so the rebalancer moves its sessions while TiDB still waits
/// (graceful-wait-before-shutdown); an unreachable port is left to the regular probe and its
/// thresholds.
async fn watch_drains(
    backends: Arc<BackendSet>,
    settings: Arc<impl Fn() -> ProbeSettings + Send + Sync + 'static>,
    events: Arc<EventLog>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::timer::sleep(DRAIN_POLL) => {}
        }
        let probe = settings();
        let timeout = Duration::from_millis(probe.health.timeout_ms.max(10)).min(DRAIN_POLL * 2);
        let mut asks = JoinSet::new();
        for b in backends.snapshot().iter().filter(|b| b.is_healthy()) {
            if let Some(addr) = probe.status_addr_of(b) {
                let b = b.clone();
                asks.spawn(async move { (status::status_code(&addr, timeout).await, b, addr) });
            }
        }
        while let Some(joined) = asks.join_next().await {
            if let Ok((Ok(code), b, addr)) = joined {
                if code != 200 {
                    let reason =
                        format!("status port {addr} answered {code} (TiDB is shutting down)");
                    if b.mark_unhealthy(&reason) {
                        warn!(backend = %b.addr, %reason, "backend is down");
                        events.push(
                            "backend-down",
                            format!("backend {} is down: {reason}", b.addr),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_backend_loses_its_series_once_its_sessions_are_gone() {
        let addr = "192.0.2.62:4000".to_owned();
        let set = BackendSet::new(std::slice::from_ref(&addr));
        let b = set.snapshot()[0].clone();
        b.metrics.record(0x03, 0.001, true, (1, 1));
        let lease = crate::balance::BackendLease::new(b);
        let series = || {
            set.metrics()
                .render()
                .matches(&format!("backend=\"{addr}\""))
                .count()
        };
        assert!(series() > 0);
        set.set_addrs(&[]);
        assert!(
            set.metrics().prune_backends().is_empty(),
            "a session is still on it"
        );
        assert!(series() > 0);
        drop(lease);
        assert_eq!(set.metrics().prune_backends(), vec![addr.clone()]);
        assert_eq!(series(), 0);
    }

    fn cfg() -> HealthConfig {
        HealthConfig {
            interval_ms: 10,
            timeout_ms: 10,
            failure_threshold: 2,
            recovery_threshold: 2,
        }
    }

    #[test]
    fn thresholds_decide_transitions() {
        let b = Backend::new("x:1".into());
        let mut s = Streak::default();
        let events = EventLog::new(4);
        let refused = || Err(ProbeError::Greeted("refused".into()));
        apply(&b, &mut s, refused(), &cfg(), &events);
        assert!(b.is_healthy(), "one failure is below the threshold");
        apply(&b, &mut s, refused(), &cfg(), &events);
        assert!(!b.is_healthy());
        apply(&b, &mut s, Ok(("v".into(), 0)), &cfg(), &events);
        assert!(
            !b.is_healthy(),
            "one success is below the recovery threshold"
        );
        apply(&b, &mut s, Ok(("v".into(), 0)), &cfg(), &events);
        assert!(b.is_healthy());
        // The transitions land in the log this prober was given, newest first.
        let kinds: Vec<&str> = events.recent().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["backend-up", "backend-down"]);
    }

    #[test]
    fn a_probe_this_proxy_could_not_run_leaves_the_backend_as_it_was() {
        let b = Backend::new("x:1".into());
        let mut s = Streak::default();
        let events = EventLog::new(4);
        let short = || {
            Err(ProbeError::Io(std::io::Error::from_raw_os_error(
                libc::EMFILE,
            )))
        };
        for _ in 0..5 {
            apply(&b, &mut s, short(), &cfg(), &events);
        }
        assert!(
            b.is_healthy(),
            "out of descriptors here is not the backend's failure"
        );
        let refused = || Err(ProbeError::Greeted("refused".into()));
        apply(&b, &mut s, refused(), &cfg(), &events);
        apply(&b, &mut s, short(), &cfg(), &events);
        assert!(
            b.is_healthy(),
            "a shortage between two failures is not a second one"
        );
        apply(&b, &mut s, refused(), &cfg(), &events);
        assert!(!b.is_healthy());
        apply(&b, &mut s, short(), &cfg(), &events);
        assert!(!b.is_healthy(), "nor does it bring a down backend back");
    }

    #[tokio::test]
    async fn probe_of_a_closed_port_fails_with_a_reason() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = probe_sql(&addr, Duration::from_secs(2), &ServiceAccount::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Io(_)), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
}
