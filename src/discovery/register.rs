//! Self-registration: what this proxy writes under `/topology/tiproxy/<ip:port>/` so TiDB
//! Dashboard and `information_schema.cluster_info` list it, and which address it advertises.

use crate::config::Config;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

pub const PROXY_PREFIX: &str = "/topology/tiproxy/";

/// The `/info` value. Ports are strings, as the Go TiProxy writes them.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyInfo {
    pub version: String,
    pub git_hash: String,
    pub ip: String,
    pub port: String,
    pub status_port: String,
    pub deploy_path: String,
    pub start_timestamp: i64,
}

/// Our two keys and the info value; the ttl value is written fresh each time.
#[derive(Debug, Clone)]
pub struct Registration {
    pub info_key: String,
    pub ttl_key: String,
    pub info_json: String,
}

impl Registration {
    pub fn from_config(cfg: &Config, pd_endpoints: &[String]) -> Self {
        let ip = advertise_ip(cfg, pd_endpoints);
        let port = port_of(&cfg.proxy.addr);
        let info = ProxyInfo {
            version: crate::version::VERSION.into(),
            git_hash: crate::version::GIT_HASH.into(),
            ip: ip.clone(),
            port: port.clone(),
            status_port: port_of(&cfg.api.addr),
            deploy_path: deploy_path(),
            start_timestamp: unix_now().as_secs() as i64,
        };
        let base = format!("{PROXY_PREFIX}{}", join_host_port(&ip, &port));
        Self {
            info_key: format!("{base}/info"),
            ttl_key: format!("{base}/ttl"),
            info_json: serde_json::to_string(&info).expect("plain struct serializes"),
        }
    }

    /// The `/ttl` value: the current time in Unix nanoseconds, as decimal text.
    pub fn ttl_value() -> String {
        unix_now().as_nanos().to_string()
    }
}

fn unix_now() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn deploy_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.display().to_string()))
        .unwrap_or_default()
}

fn port_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default()
}

fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn usable(ip: IpAddr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

/// `[proxy] advertise-addr` if set; else the listen IP if it is a specific one; else the local
/// IP that routes to PD (or anywhere); else 127.0.0.1. Finding a route sends no packet.
pub fn advertise_ip(cfg: &Config, pd_endpoints: &[String]) -> String {
    let adv = cfg.proxy.advertise_addr.trim();
    if !adv.is_empty() {
        if let Ok(sa) = adv.parse::<SocketAddr>() {
            return sa.ip().to_string();
        }
        return adv.trim_start_matches('[').trim_end_matches(']').to_owned();
    }
    if let Ok(sa) = cfg.proxy.addr.parse::<SocketAddr>() {
        if usable(sa.ip()) {
            return sa.ip().to_string();
        }
    }
    let probes = pd_endpoints
        .iter()
        .map(String::as_str)
        .chain(["8.8.8.8:53"]);
    for target in probes {
        if let Some(ip) = local_ip_towards(target) {
            return ip.to_string();
        }
    }
    "127.0.0.1".into()
}

fn local_ip_towards(target: &str) -> Option<IpAddr> {
    let dest = target.to_socket_addrs().ok()?.find(|a| a.is_ipv4())?;
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(dest).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    usable(ip).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_info_follow_the_topology_layout() {
        let mut cfg = Config::default();
        cfg.proxy.addr = "0.0.0.0:6001".into();
        cfg.api.addr = "0.0.0.0:3081".into();
        cfg.proxy.advertise_addr = "10.1.2.3".into();
        let r = Registration::from_config(&cfg, &[]);
        assert_eq!(r.info_key, "/topology/tiproxy/10.1.2.3:6001/info");
        assert_eq!(r.ttl_key, "/topology/tiproxy/10.1.2.3:6001/ttl");
        let v: serde_json::Value = serde_json::from_str(&r.info_json).unwrap();
        assert_eq!(v["ip"], "10.1.2.3");
        assert_eq!(v["port"], "6001");
        assert_eq!(v["status_port"], "3081");
        for field in ["version", "git_hash", "deploy_path", "start_timestamp"] {
            assert!(v.get(field).is_some(), "{field}");
        }
        let ttl: u128 = Registration::ttl_value().parse().unwrap();
        assert!(ttl > 1_600_000_000_000_000_000);
    }

    #[test]
    fn advertise_address_choice() {
        let mut cfg = Config::default();
        cfg.proxy.advertise_addr = "[fd00::1]:6000".into();
        assert_eq!(advertise_ip(&cfg, &[]), "fd00::1");
        cfg.proxy.advertise_addr = "proxy.example".into();
        assert_eq!(advertise_ip(&cfg, &[]), "proxy.example");
        cfg.proxy.advertise_addr.clear();
        cfg.proxy.addr = "10.9.8.7:6000".into();
        assert_eq!(advertise_ip(&cfg, &[]), "10.9.8.7");
        cfg.proxy.addr = "0.0.0.0:6000".into();
        let ip: IpAddr = advertise_ip(&cfg, &["127.0.0.1:2379".into()])
            .parse()
            .unwrap();
        assert!(!ip.is_unspecified());
    }
}
