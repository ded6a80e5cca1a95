//! A scripted TiDB status port for the balancing tests: `/status` answers 200 and `/metrics`
//! the CPU counter and memory figures the test sets (TiDB's metric names), plus the PD
//! topology entry that makes the proxy discover it. Loopback only.

use etcd_client::PutOptions;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const MAXPROCS: f64 = 4.0;
pub const MEMORY_QUOTA: f64 = 1e9;

/// What a scripted TiDB reports: its CPU counter advances at `usage` of its procs, and its
/// resident memory is `memory` of the quota.
struct Figures {
    usage: f64,
    memory: f64,
    cpu_seconds: f64,
    at: Instant,
}

impl Figures {
    fn advance(&mut self) {
        let now = Instant::now();
        self.cpu_seconds += self.usage * MAXPROCS * now.duration_since(self.at).as_secs_f64();
        self.at = now;
    }
}

pub struct TidbStatus {
    pub port: u16,
    figures: Arc<Mutex<Figures>>,
    task: tokio::task::JoinHandle<()>,
}

impl TidbStatus {
    pub async fn start(usage: f64) -> TidbStatus {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let figures = Arc::new(Mutex::new(Figures {
            usage,
            memory: 0.3,
            cpu_seconds: 100.0,
            at: Instant::now(),
        }));
        let f = figures.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let body = if head.starts_with("GET /metrics") {
                        let (cpu, memory) = {
                            let mut g = f.lock().unwrap();
                            g.advance();
                            (g.cpu_seconds, g.memory * MEMORY_QUOTA)
                        };
                        format!(
                            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n\
                             tidb_server_maxprocs {MAXPROCS}\nprocess_resident_memory_bytes {memory}\n\
                             tidb_server_memory_quota_bytes {MEMORY_QUOTA}\n\
                             tidb_server_query_total{{result=\"OK\",type=\"Query\"}} 10\n"
                        )
                    } else {
                        r#"{"connections":0,"version":"8.0.11-TiDB","git_hash":"x"}"#.to_string()
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        TidbStatus {
            port,
            figures,
            task,
        }
    }

    /// CPU from now on, as a share of the procs.
    pub fn set_usage(&self, usage: f64) {
        let mut g = self.figures.lock().unwrap();
        g.advance();
        g.usage = usage;
    }

    /// Resident memory from now on, as a share of the quota.
    pub fn set_memory(&self, share: f64) {
        self.figures.lock().unwrap().memory = share;
    }
}

impl Drop for TidbStatus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Puts a TiDB in PD's topology as TiDB does: its info with a `zone` label, and a TTL key on a
/// lease.
pub async fn register(
    etcd: &mut etcd_client::Client,
    sql_addr: &str,
    status_port: u16,
    zone: &str,
) {
    let info = format!(
        r#"{{"version":"8.0.11-TiDB-v7.5.0","git_hash":"abc","ip":"127.0.0.1","status_port":{status_port},"deploy_path":"/tmp","start_timestamp":1700000000,"labels":{{"zone":"{zone}"}}}}"#
    );
    etcd.put(format!("/topology/tidb/{sql_addr}/info"), info, None)
        .await
        .unwrap();
    let lease = etcd.lease_grant(300, None).await.unwrap().id();
    etcd.put(
        format!("/topology/tidb/{sql_addr}/ttl"),
        "1700000000000000000",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
}

/// The proxy's own `/metrics` text ("" when it does not answer within 5 s).
pub async fn proxy_metrics(api_port: u16) -> String {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", api_port))
            .await
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The sum of `tiproxy_balance_migrate_total` series with `reason` and a successful result.
pub fn moves_for(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tiproxy_balance_migrate_total{")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.contains("migrate_res=\"succeed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.
        + 0.0
}
