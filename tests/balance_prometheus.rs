//! Load figures from the Prometheus in PD's topology, end to end: a real etcd holds the TiDB
//! topology and `/topology/prometheus`, a scripted Prometheus answers the proxy's instant
//! queries, and scripted TiDB status ports serve their own `/metrics` with other figures.
//! While Prometheus answers, its figures are the ones scored; when it fails, the proxy falls
//! back to each TiDB's `/metrics`. Real MariaDB servers stand behind the TiDB addresses.

mod common;

use common::mariadb::MariaDb;
use common::pd::{wait_for, Etcd, Proxy};
use common::tidb_metrics::{proxy_metrics, register, TidbStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A Prometheus HTTP API that answers `/api/v1/query` for the CPU and memory queries with
/// the per-instance values the test sets, or 503 while `down`.
struct ScriptedPrometheus {
    port: u16,
    cpu: Arc<Mutex<HashMap<String, f64>>>,
    down: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn vector(values: &HashMap<String, f64>) -> String {
    let series: Vec<String> = values
        .iter()
        .map(|(inst, v)| {
            format!(
                r#"{{"metric":{{"instance":"{inst}","job":"tidb"}},"value":[1700000000.0,"{v}"]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        series.join(",")
    )
}

/// Decodes `%XX` escapes of a query string (enough for the test to match on names).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ScriptedPrometheus {
    async fn start() -> ScriptedPrometheus {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cpu = Arc::new(Mutex::new(HashMap::new()));
        let down = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (c, d, q) = (cpu.clone(), down.clone(), queries.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (c, d, q) = (c.clone(), d.clone(), q.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let query = target
                        .strip_prefix("/api/v1/query?query=")
                        .map(decode)
                        .unwrap_or_default();
                    let (code, body) = if d.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", "down".to_string())
                    } else if query.is_empty() {
                        ("404 Not Found", String::new())
                    } else {
                        q.fetch_add(1, Ordering::SeqCst);
                        let figures = c.lock().unwrap().clone();
                        let values: HashMap<String, f64> = if !query.contains("job=\"tidb\"") {
                            HashMap::new()
                        } else if query.contains("process_cpu_seconds_total") {
                            figures
                        } else if query.contains("process_resident_memory_bytes") {
                            figures.keys().map(|k| (k.clone(), 0.3)).collect()
                        } else {
                            figures.keys().map(|k| (k.clone(), 0.0)).collect()
                        };
                        ("200 OK", vector(&values))
                    };
                    let resp = format!(
                        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        ScriptedPrometheus {
            port,
            cpu,
            down,
            queries,
            task,
        }
    }

    fn set_cpu(&self, instance: &str, share: f64) {
        self.cpu.lock().unwrap().insert(instance.to_string(), share);
    }
}

impl Drop for ScriptedPrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy's CPU score for `addr`, if it publishes one.
fn cpu_score(metrics: &str, addr: &str) -> Option<f64> {
    let prefix = format!("tiproxy_balance_b_score{{backend=\"{addr}\",factor=\"cpu\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_come_from_prometheus_in_the_topology_and_fall_back_to_each_tidb() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let dbs = MariaDb::start_many(2);
    let (a, b) = (&dbs[0], &dbs[1]);
    // Each TiDB's own /metrics says: a idle, b idle.
    let sa = TidbStatus::start(0.05).await;
    let sb = TidbStatus::start(0.05).await;
    register(&mut kv, &a.addr(), sa.port, "z1").await;
    register(&mut kv, &b.addr(), sb.port, "z1").await;
    // Prometheus says: a busy (95 %, score 4), b idle.
    let prom = ScriptedPrometheus::start().await;
    prom.set_cpu(&format!("127.0.0.1:{}", sa.port), 0.95);
    prom.set_cpu(&format!("127.0.0.1:{}", sb.port), 0.05);
    kv.put(
        "/topology/prometheus/127.0.0.1:9090",
        format!(
            r#"{{"ip":"127.0.0.1","binary_path":"/x/prometheus","port":{}}}"#,
            prom.port
        ),
        None,
    )
    .await
    .unwrap();
    let proxy = Proxy::start(&format!("pd-addrs = \"{}\"", etcd.endpoint()), "").await;

    let (aa, ba) = (a.addr(), b.addr());
    wait_for(
        "a's CPU score from Prometheus",
        Duration::from_secs(40),
        || async {
            let m = proxy_metrics(proxy.api_port).await;
            (cpu_score(&m, &aa) == Some(4.0) && cpu_score(&m, &ba) == Some(0.0)).then_some(())
        },
    )
    .await;
    assert!(prom.queries.load(Ordering::SeqCst) > 0);
    assert!(
        proxy.log().contains("Prometheus"),
        "the source is logged:\n{}",
        proxy.log()
    );
    // New sessions avoid the TiDB Prometheus calls busy, though its own /metrics say idle.
    for _ in 0..3 {
        assert_eq!(proxy.landing_port().await.unwrap(), b.port());
    }

    // Prometheus fails: each TiDB's own /metrics decide, where b is now the busy one.
    sb.set_usage(0.95);
    prom.down.store(true, Ordering::SeqCst);
    wait_for(
        "the scores from each TiDB's /metrics",
        Duration::from_secs(40),
        || async {
            let m = proxy_metrics(proxy.api_port).await;
            (cpu_score(&m, &aa) == Some(0.0) && cpu_score(&m, &ba) == Some(4.0)).then_some(())
        },
    )
    .await;
    assert_eq!(proxy.landing_port().await.unwrap(), a.port());

    // Prometheus answers again: its figures are used again.
    prom.down.store(false, Ordering::SeqCst);
    wait_for(
        "the scores from Prometheus again",
        Duration::from_secs(40),
        || async {
            let m = proxy_metrics(proxy.api_port).await;
            (cpu_score(&m, &aa) == Some(4.0) && cpu_score(&m, &ba) == Some(0.0)).then_some(())
        },
    )
    .await;
}
