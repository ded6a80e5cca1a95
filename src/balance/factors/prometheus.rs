//! Load figures from the Prometheus that PD's topology names (`/topology/prometheus`), as
//! TiProxy reads them: one instant query per factor over every TiDB, answered per `instance`
//! (the TiDB's status address). When there is no Prometheus, or it fails or knows no TiDB,
//! the driver reads each TiDB's `/metrics` instead. Plain HTTP/1.0, bounded body and time.

use super::Load;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where PD's topology keeps the Prometheus address (a prefix: the first key is used).
pub const TOPOLOGY_PREFIX: &str = "/topology/prometheus";

/// Query answers for a few dozen TiDBs are small; anything past this is refused.
const MAX_BODY: usize = 4 << 20;

/// The `host:port` of a Prometheus from its topology value (`{"ip": .., "port": ..}`).
pub fn address_from_topology(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let ip = v.get("ip")?.as_str().filter(|s| !s.is_empty())?;
    let port = v
        .get("port")?
        .as_u64()
        .filter(|p| (1..=65535).contains(p))?;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("Prometheus at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus at {addr}: no answer within {} ms", .limit.as_millis())]
    Timeout { addr: String, limit: Duration },
    #[error("Prometheus at {addr} answered {what}")]
    Refused { addr: String, what: String },
    #[error("Prometheus at {addr} has no TiDB CPU or memory series")]
    Empty { addr: String },
}

/// The label that names the TiDB job: `job` under TiUP, `component` under TiDB Operator.
const JOB_LABELS: [&str; 2] = ["job", "component"];

fn cpu_query(l: &str) -> String {
    format!("irate(process_cpu_seconds_total{{{l}=\"tidb\"}}[30s])/tidb_server_maxprocs")
}

fn memory_query(l: &str) -> String {
    format!("process_resident_memory_bytes{{{l}=\"tidb\"}}/tidb_server_memory_quota_bytes")
}

/// For TiDBs without a memory quota: their resident memory, set against the host's total.
fn rss_query(l: &str) -> String {
    format!("process_resident_memory_bytes{{{l}=\"tidb\"}}")
}

/// node_exporter's figure for each host (its `instance` is the host with node_exporter's port).
const HOST_MEMORY_QUERY: &str = "node_memory_MemTotal_bytes";

/// The host part of an `instance` (`10.0.0.5:10080`, `[::1]:10080`).
fn host_of(instance: &str) -> &str {
    let host = instance.rsplit_once(':').map_or(instance, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Memory shares of the host's total for the TiDBs in `missing`, where node_exporter's figure
/// for their host is known; a TiDB on a host it does not cover stays without one.
async fn host_memory_shares(
    addr: &str,
    label: &str,
    missing: &[String],
) -> Result<Vec<(String, f64)>, PromError> {
    let totals: HashMap<String, f64> = query(addr, HOST_MEMORY_QUERY)
        .await?
        .into_iter()
        .filter(|(_, v)| v.is_finite() && *v > 0.0)
        .map(|(inst, v)| (host_of(&inst).to_owned(), v))
        .collect();
    if totals.is_empty() {
        return Ok(Vec::new());
    }
    Ok(query(addr, &rss_query(label))
        .await?
        .into_iter()
        .filter(|(inst, v)| v.is_finite() && missing.contains(inst))
        .filter_map(|(inst, rss)| {
            let total = totals.get(host_of(&inst))?;
            Some((inst, rss / total))
        })
        .collect())
}

fn error_rate_query(l: &str) -> String {
    format!(
        "sum by (instance) (rate(tidb_server_query_total{{{l}=\"tidb\",result=\"Error\"}}[1m])) / \
         sum by (instance) (rate(tidb_server_query_total{{{l}=\"tidb\"}}[1m]))"
    )
}

/// Each TiDB's figures by its `instance` (status address), or why Prometheus gave none.
pub async fn read_loads(addr: &str, timeout: Duration) -> Result<HashMap<String, Load>, PromError> {
    let fut = async {
        for label in JOB_LABELS {
            let cpu = query(addr, &cpu_query(label)).await?;
            let memory = query(addr, &memory_query(label)).await?;
            if cpu.is_empty() && memory.is_empty() {
                continue;
            }
            // No query at all gives 0/0: nothing failed either.
            let errors = query(addr, &error_rate_query(label)).await?;
            let mut loads: HashMap<String, Load> = HashMap::new();
            for (inst, v) in cpu.into_iter().filter(|(_, v)| v.is_finite()) {
                loads.entry(inst).or_default().cpu = Some(v.max(0.0));
            }
            for (inst, v) in memory.into_iter().filter(|(_, v)| v.is_finite()) {
                loads.entry(inst).or_default().memory = Some(v.max(0.0));
            }
            // TiDBs without tidb_server_memory_quota_bytes: the host's memory instead.
            let missing: Vec<String> = loads
                .iter()
                .filter(|(_, l)| l.memory.is_none())
                .map(|(inst, _)| inst.clone())
                .collect();
            if !missing.is_empty() {
                // Best effort: without the host figures these TiDBs just have no memory figure.
                let shares = host_memory_shares(addr, label, &missing).await;
                for (inst, v) in shares.unwrap_or_default() {
                    loads.entry(inst).or_default().memory = Some(v.max(0.0));
                }
            }
            for (inst, v) in errors {
                let rate = if v.is_finite() {
                    v.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                loads.entry(inst).or_default().error_rate = Some(rate);
            }
            return Ok(loads);
        }
        Err(PromError::Empty {
            addr: addr.to_owned(),
        })
    };
    crate::timer::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(PromError::Timeout {
                addr: addr.to_owned(),
                limit: timeout,
            })
        })
}

/// One instant query: `instance` label and value of each series of the vector answered.
async fn query(addr: &str, promql: &str) -> Result<Vec<(String, f64)>, PromError> {
    let io = |source| PromError::Io {
        addr: addr.to_owned(),
        source,
    };
    let refused = |what: String| PromError::Refused {
        addr: addr.to_owned(),
        what,
    };
    let mut tcp = TcpStream::connect(addr).await.map_err(io)?;
    let req = format!(
        "GET /api/v1/query?query={} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: tiproxy\r\n\r\n",
        percent_encode(promql)
    );
    tcp.write_all(req.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    if raw.len() > MAX_BODY {
        return Err(refused(format!("more than {MAX_BODY} bytes")));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| refused("no HTTP answer".into()))?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(refused(format!("HTTP {code}")));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| refused(format!("no JSON: {e}")))?;
    if v.get("status").and_then(|s| s.as_str()) != Some("success") {
        return Err(refused("a failed query".into()));
    }
    let result = v
        .pointer("/data/result")
        .and_then(|r| r.as_array())
        .ok_or_else(|| refused("no result vector".into()))?;
    Ok(result
        .iter()
        .filter_map(|series| {
            let inst = series.pointer("/metric/instance")?.as_str()?.to_owned();
            let value = series.pointer("/value/1")?.as_str()?.parse::<f64>().ok()?;
            Some((inst, value))
        })
        .collect())
}

/// Query-string encoding: everything but unreserved characters as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn topology_values_give_an_address_or_nothing() {
        assert_eq!(
            address_from_topology(br#"{"ip":"10.0.0.5","binary_path":"/x","port":9090}"#),
            Some("10.0.0.5:9090".into())
        );
        assert_eq!(
            address_from_topology(br#"{"ip":"::1","port":9090}"#),
            Some("[::1]:9090".into())
        );
        assert_eq!(address_from_topology(br#"{"ip":"","port":9090}"#), None);
        assert_eq!(address_from_topology(br#"{"ip":"a","port":0}"#), None);
        assert_eq!(address_from_topology(b"not json"), None);
    }

    /// Answers each query by the first rule whose needle the decoded query contains.
    async fn serve(rules: Vec<(&'static str, &'static str)>, conns: usize) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for _ in 0..conns {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).replace("%22", "\"");
                let body = rules
                    .iter()
                    .find(|(needle, _)| head.contains(needle))
                    .map_or(r#"{"status":"success","data":{"result":[]}}"#, |r| r.1);
                let _ = s
                    .write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes())
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn figures_by_instance_with_the_operator_label_and_no_queries() {
        let one = |v: &str| {
            format!(
                r#"{{"status":"success","data":{{"result":[{{"metric":{{"instance":"t:10080"}},"value":[1,"{v}"]}}]}}}}"#
            )
        };
        let (cpu, mem, err) = (one("0.5"), one("0.25"), one("NaN"));
        let rules: Vec<(&'static str, &'static str)> = vec![
            ("component%3D\"tidb\"%7D%5B30s", cpu.leak()),
            ("process_resident_memory_bytes%7Bcomponent", mem.leak()),
            ("Error", err.leak()),
        ];
        // Under the `job` label nothing (two empty answers), then three under `component`.
        let addr = serve(rules, 5).await;
        let loads = read_loads(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            loads["t:10080"],
            Load {
                cpu: Some(0.5),
                memory: Some(0.25),
                error_rate: Some(0.0),
            }
        );
        let empty = serve(vec![], 4).await;
        assert!(matches!(
            read_loads(&empty, Duration::from_secs(5)).await,
            Err(PromError::Empty { .. })
        ));
        let refusing = serve(vec![("GET", r#"{"status":"error"}"#)], 1).await;
        assert!(read_loads(&refusing, Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test]
    async fn without_a_quota_memory_is_a_share_of_the_hosts() {
        let series = |pairs: &[(&str, &str)]| {
            let items: Vec<String> = pairs
                .iter()
                .map(|(i, v)| format!(r#"{{"metric":{{"instance":"{i}"}},"value":[1,"{v}"]}}"#))
                .collect();
            format!(
                r#"{{"status":"success","data":{{"result":[{}]}}}}"#,
                items.join(",")
            )
        };
        let cpu = series(&[("10.0.0.1:10080", "0.1"), ("10.0.0.2:10080", "0.1")]);
        let hosts = series(&[("10.0.0.1:9100", "8000000000")]);
        let rss = series(&[("10.0.0.1:10080", "2000000000"), ("10.0.0.2:10080", "1")]);
        let rules: Vec<(&'static str, &'static str)> = vec![
            ("%5B30s", cpu.leak()),
            ("node_memory_MemTotal_bytes", hosts.leak()),
            (
                "process_resident_memory_bytes%7Bjob%3D\"tidb\"%7D HTTP",
                rss.leak(),
            ),
        ];
        // cpu, memory (no quota: empty), errors, then the host totals and resident memory.
        let addr = serve(rules, 5).await;
        let loads = read_loads(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(loads["10.0.0.1:10080"].memory, Some(0.25));
        assert_eq!(
            loads["10.0.0.2:10080"].memory, None,
            "its host is not covered"
        );
        assert_eq!(host_of("[::1]:10080"), "::1");
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            percent_encode("a{job=\"tidb\"}[30s] /b"),
            "a%7Bjob%3D%22tidb%22%7D%5B30s%5D%20%2Fb"
        );
    }
}
