//! Lists of trusted source networks (`"10.0.0.0/8"`, `"192.168.1.7"`, `"::1/128"`, `"*"`), as
//! `[proxy] proxy-protocol-networks` takes them.

use std::net::IpAddr;

/// Why a network in the config could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address or CIDR network")]
    NotAnAddress(String),
    #[error("{text:?} has a prefix length outside 0..={max}")]
    PrefixOutOfRange { text: String, max: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    Any,
    Cidr { base: IpAddr, prefix: u8 },
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, NetworkError> {
        let t = text.trim();
        if t == "*" {
            return Ok(Network::Any);
        }
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let base: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| NetworkError::NotAnAddress(t.to_string()))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                NetworkError::PrefixOutOfRange {
                    text: t.to_string(),
                    max,
                }
            })?,
            None => max,
        };
        Ok(Network::Cidr { base, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            Network::Any => true,
            Network::Cidr { base, prefix } => match (canonical(*base), ip) {
                (IpAddr::V4(b), IpAddr::V4(i)) => same_prefix(&b.octets(), &i.octets(), *prefix),
                (IpAddr::V6(b), IpAddr::V6(i)) => same_prefix(&b.octets(), &i.octets(), *prefix),
                _ => false,
            },
        }
    }
}

/// IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// Parsed `proxy-protocol-networks`; empty trusts loopback only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedNetworks(Vec<Network>);

impl TrustedNetworks {
    pub fn parse(list: &[String]) -> Result<Self, NetworkError> {
        list.iter()
            .map(|s| Network::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedNetworks)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return canonical(ip).is_loopback();
        }
        self.0.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_hosts_and_any() {
        let n =
            TrustedNetworks::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()])
                .unwrap();
        assert!(n.trusts(ip("10.200.3.4")));
        assert!(n.trusts(ip("::ffff:10.1.2.3")));
        assert!(n.trusts(ip("192.168.1.7")));
        assert!(!n.trusts(ip("192.168.1.8")));
        assert!(n.trusts(ip("fd12::1")));
        assert!(
            !n.trusts(ip("127.0.0.1")),
            "a list replaces the loopback default"
        );
        let n = TrustedNetworks::parse(&["172.16.0.0/12".into()]).unwrap();
        assert!(n.trusts(ip("172.31.255.1")) && !n.trusts(ip("172.32.0.1")));
        assert!(TrustedNetworks::parse(&["*".into()])
            .unwrap()
            .trusts(ip("8.8.8.8")));
        let d = TrustedNetworks::default();
        assert!(d.trusts(ip("127.0.0.1")) && d.trusts(ip("::1")) && !d.trusts(ip("10.0.0.1")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("example.com").is_err());
    }
}
