//! Backend health probes: a periodic SQL-port check (connect, greeting, a login that ends
//! cleanly), plus
//! `GET /status` for TiDBs with a known status port, with failure and recovery thresholds,
//! marking backends up and down for routing.

pub mod status;

use crate::balance::{Backend, BackendSet};
use crate::config::HealthConfig;
use crate::protocol::constants::{
    cap, cmd, DEFAULT_COLLATION, ERR_HEADER, NATIVE_PASSWORD_PLUGIN, OK_HEADER,
};
use crate::protocol::handshake::{Greeting, HandshakeResponse};
use crate::protocol::response::ErrPacket;
use crate::protocol::{PacketConn, Stream};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The user the SQL probe logs in as. It normally does not exist: the backend's "access
/// denied" is a clean end of the handshake, whereas hanging up after the greeting counts as a
/// handshake error towards the backend's max_connect_errors and would get the proxy's host
/// blocked. Should the user exist without a password, the probe logs in and quits.
pub const PROBE_USER: &str = "tiproxy_health_probe";

/// Plain capabilities for the probe's login.
const PROBE_CAPS: u32 = cap::LONG_PASSWORD
    | cap::PROTOCOL_41
    | cap::SECURE_CONNECTION
    | cap::PLUGIN_AUTH
    | cap::TRANSACTIONS;

/// One probe of a backend's SQL port: greeting, a login as `PROBE_USER` answered with OK or
/// "access denied" (both mean the server is serving), and a clean end. TiDB's `/status` is
/// probed in `status`.
pub async fn probe_sql(addr: &str, timeout: Duration) -> Result<(String, u32), String> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut conn = PacketConn::new(Stream::Plain(tcp), 1024);
        let (_, p) = conn
            .read_packet(64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        if p.first() == Some(&ERR_HEADER) {
            let e = ErrPacket::parse(&p)
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(format!("backend answered with an error: {e}"));
        }
        let g = Greeting::parse(&p).map_err(|e| format!("malformed greeting: {e}"))?;
        sign_off(&mut conn, &g).await?;
        Ok((g.server_version, g.capabilities))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no greeting within {} ms", timeout.as_millis())),
    }
}

/// Ends a connection that has only been greeted (`g`) with the probe's login, answered with OK
/// or "access denied", and a clean close: hanging up instead would count towards the backend's
/// max_connect_errors.
pub async fn sign_off(conn: &mut PacketConn, g: &Greeting) -> Result<(), String> {
    let login = HandshakeResponse {
        capabilities: PROBE_CAPS & g.capabilities | cap::PROTOCOL_41,
        max_packet: 1 << 24,
        collation: DEFAULT_COLLATION,
        user: PROBE_USER.as_bytes().to_vec(),
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
        ..Default::default()
    };
    conn.write_packet(1, &login.encode())
        .await
        .map_err(|e| e.to_string())?;
    // Bounded: an auth switch or two, then OK or ERR.
    for _ in 0..3 {
        let (s, p) = conn
            .read_packet(64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        match p.first() {
            Some(&OK_HEADER) => {
                let _ = conn.write_packet(0, &[cmd::QUIT]).await;
                break;
            }
            Some(&ERR_HEADER) => {
                let e = ErrPacket::parse(&p).unwrap_or_else(|| ErrPacket::new(0, "", ""));
                // 1045/1698: access denied, the expected answer of a serving server.
                if e.code != 1045 && e.code != 1698 {
                    return Err(format!("backend refused a login: {e}"));
                }
                break;
            }
            _ => {
                // An auth switch or more-data request: answer with no password.
                conn.write_packet(s.wrapping_add(1), &[])
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    conn.shutdown().await;
    Ok(())
}

#[derive(Default)]
struct Streak {
    fails: u32,
    oks: u32,
}

fn apply(
    backend: &Backend,
    streak: &mut Streak,
    result: Result<(String, u32), String>,
    cfg: &HealthConfig,
) {
    match result {
        Ok((version, caps)) => {
            backend.record_greeting(&version, caps);
            streak.fails = 0;
            streak.oks = streak.oks.saturating_add(1);
            if streak.oks >= cfg.recovery_threshold.max(1) && backend.mark_healthy() {
                info!(backend = %backend.addr, version = %version, "backend is up");
                crate::events::push("backend-up", format!("backend {} is up", backend.addr));
            }
        }
        Err(reason) => {
            streak.oks = 0;
            streak.fails = streak.fails.saturating_add(1);
            if streak.fails >= cfg.failure_threshold.max(1) && backend.mark_unhealthy(&reason) {
                warn!(backend = %backend.addr, %reason, "backend is down");
                crate::events::push(
                    "backend-down",
                    format!("backend {} is down: {reason}", backend.addr),
                );
            }
        }
    }
}

/// Probes every backend each interval until `shutdown` fires.
/// `settings` is read every round, so `[health]` changes apply without a restart.
pub fn start(
    backends: Arc<BackendSet>,
    settings: impl Fn() -> HealthConfig + Send + 'static,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut streaks: HashMap<String, Streak> = HashMap::new();
        loop {
            let cfg = settings();
            let interval = Duration::from_millis(cfg.interval_ms.max(10));
            let timeout = Duration::from_millis(cfg.timeout_ms.max(10));
            let round = std::time::Instant::now();
            let list = backends.snapshot();
            let mut probes = JoinSet::new();
            for b in list.iter() {
                let b = b.clone();
                probes.spawn(async move {
                    let mut r = probe_sql(&b.addr, timeout).await;
                    if let (Ok(_), Some(status_addr)) = (&r, b.status_addr()) {
                        if let Err(e) = status::probe_status(&status_addr, timeout).await {
                            r = Err(e);
                        }
                    }
                    (b, r)
                });
            }
            while let Some(joined) = probes.join_next().await {
                if let Ok((b, r)) = joined {
                    let streak = streaks.entry(b.addr.clone()).or_default();
                    apply(&b, streak, r, &cfg);
                }
            }
            streaks.retain(|addr, _| list.iter().any(|b| &b.addr == addr));
            crate::metrics::get()
                .health_check_seconds
                .set(round.elapsed().as_secs_f64());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        apply(&b, &mut s, Err("refused".into()), &cfg());
        assert!(b.is_healthy(), "one failure is below the threshold");
        apply(&b, &mut s, Err("refused".into()), &cfg());
        assert!(!b.is_healthy());
        apply(&b, &mut s, Ok(("v".into(), 0)), &cfg());
        assert!(
            !b.is_healthy(),
            "one success is below the recovery threshold"
        );
        apply(&b, &mut s, Ok(("v".into(), 0)), &cfg());
        assert!(b.is_healthy());
    }

    #[tokio::test]
    async fn probe_of_a_closed_port_fails_with_a_reason() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = probe_sql(&addr, Duration::from_secs(2)).await.unwrap_err();
        assert!(!err.is_empty());
    }
}
