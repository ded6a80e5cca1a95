//! The TiDB topology as PD's etcd holds it: `/topology/tidb/<addr>/info` (JSON, no lease) and
//! `/topology/tidb/<addr>/ttl` (under the TiDB's lease). A TiDB is a backend while both exist.

use crate::balance::{BackendSource, BackendSpec};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use tracing::warn;

pub const TIDB_PREFIX: &str = "/topology/tidb/";

/// What a TiDB writes under `/info`; fields it omits default to empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TidbInfo {
    pub version: String,
    pub git_hash: String,
    pub ip: String,
    pub status_port: u16,
    pub deploy_path: String,
    pub start_timestamp: i64,
    /// Go writes a nil map as `null`.
    #[serde(deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Info,
    Ttl,
}

/// Splits `/topology/tidb/<addr>/info|ttl` into the SQL address and the kind; other keys
/// (keyspace-scoped or unknown suffixes) are not ours to read.
pub fn parse_tidb_key(key: &str) -> Option<(&str, KeyKind)> {
    let rest = key.strip_prefix(TIDB_PREFIX)?;
    let (addr, suffix) = rest.rsplit_once('/')?;
    if addr.is_empty() || addr.contains('/') {
        return None;
    }
    match suffix {
        "info" => Some((addr, KeyKind::Info)),
        "ttl" => Some((addr, KeyKind::Ttl)),
        _ => None,
    }
}

/// The host of `addr` (`ip:port` or `[v6]:port`), without brackets.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The topology seen so far, updated key by key from a listing and then from watch events.
#[derive(Debug, Default)]
pub struct TidbTopology {
    infos: BTreeMap<String, TidbInfo>,
    alive: BTreeSet<String>,
}

impl TidbTopology {
    pub fn put(&mut self, key: &str, value: &[u8]) {
        match parse_tidb_key(key) {
            Some((addr, KeyKind::Ttl)) => {
                self.alive.insert(addr.to_owned());
            }
            Some((addr, KeyKind::Info)) => match serde_json::from_slice::<TidbInfo>(value) {
                Ok(info) => {
                    self.infos.insert(addr.to_owned(), info);
                }
                // A TiDB we cannot read is one we cannot health-check; leave it out.
                Err(e) => {
                    warn!(key, error = %e, "ignoring a TiDB topology entry that is not valid JSON")
                }
            },
            None => {}
        }
    }

    pub fn delete(&mut self, key: &str) {
        match parse_tidb_key(key) {
            Some((addr, KeyKind::Ttl)) => {
                self.alive.remove(addr);
            }
            Some((addr, KeyKind::Info)) => {
                self.infos.remove(addr);
            }
            None => {}
        }
    }

    /// Live TiDBs as backend specs, ordered by address.
    pub fn specs(&self) -> Vec<BackendSpec> {
        self.infos
            .iter()
            .filter(|(addr, _)| self.alive.contains(*addr))
            .map(|(addr, info)| {
                let ip = if info.ip.is_empty() {
                    host_of(addr)
                } else {
                    &info.ip
                };
                BackendSpec {
                    addr: addr.clone(),
                    source: BackendSource::Pd,
                    status_addr: (info.status_port != 0)
                        .then(|| join_host_port(ip, info.status_port)),
                    labels: info.labels.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"{"version":"8.0.11-TiDB-v7.5.0","git_hash":"abc","ip":"10.0.0.1",
        "status_port":10080,"deploy_path":"/tidb","start_timestamp":1700000000,
        "labels":{"zone":"east"}}"#;

    #[test]
    fn keys_split_into_address_and_kind() {
        assert_eq!(
            parse_tidb_key("/topology/tidb/10.0.0.1:4000/info"),
            Some(("10.0.0.1:4000", KeyKind::Info))
        );
        assert_eq!(
            parse_tidb_key("/topology/tidb/[::1]:4000/ttl"),
            Some(("[::1]:4000", KeyKind::Ttl))
        );
        assert_eq!(parse_tidb_key("/topology/tidb/10.0.0.1:4000/other"), None);
        assert_eq!(parse_tidb_key("/topology/tidb//ttl"), None);
        assert_eq!(parse_tidb_key("/topology/tiproxy/1.1.1.1:6000/ttl"), None);
        assert_eq!(parse_tidb_key("/topology/tidb/a/b/ttl"), None);
    }

    #[test]
    fn info_json_parses_with_missing_fields_defaulted() {
        let i: TidbInfo = serde_json::from_str(INFO).unwrap();
        assert_eq!(i.status_port, 10080);
        assert_eq!(i.labels.get("zone").map(String::as_str), Some("east"));
        let i: TidbInfo = serde_json::from_str(r#"{"ip":"h","labels":null}"#).unwrap();
        assert_eq!(i.status_port, 0);
        assert!(i.labels.is_empty());
    }

    #[test]
    fn a_tidb_is_live_while_both_info_and_ttl_exist() {
        let mut t = TidbTopology::default();
        t.put("/topology/tidb/10.0.0.1:4000/info", INFO.as_bytes());
        assert!(t.specs().is_empty(), "no ttl yet");
        t.put("/topology/tidb/10.0.0.1:4000/ttl", b"1700000000000000000");
        let specs = t.specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].addr, "10.0.0.1:4000");
        assert_eq!(specs[0].source, BackendSource::Pd);
        assert_eq!(specs[0].status_addr.as_deref(), Some("10.0.0.1:10080"));
        assert_eq!(
            specs[0].labels.get("zone").map(String::as_str),
            Some("east")
        );
        t.delete("/topology/tidb/10.0.0.1:4000/ttl");
        assert!(t.specs().is_empty(), "lease gone");
    }

    #[test]
    fn missing_ip_falls_back_to_the_key_and_bad_json_is_skipped() {
        let mut t = TidbTopology::default();
        t.put(
            "/topology/tidb/[::1]:4000/info",
            br#"{"status_port":10080}"#,
        );
        t.put("/topology/tidb/[::1]:4000/ttl", b"1");
        t.put("/topology/tidb/h:4000/info", b"not json");
        t.put("/topology/tidb/h:4000/ttl", b"1");
        let specs = t.specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].status_addr.as_deref(), Some("[::1]:10080"));
    }
}
