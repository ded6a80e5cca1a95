//! Connections still in their handshake, counted per client IP address: one host's silent
//! connects (a flood, or a broken pool) cannot take every slot that real logins need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Handshakes {
    by_ip: Mutex<HashMap<IpAddr, u64>>,
}

/// One connection counted against its IP until it logs in or closes.
pub struct HandshakeTicket {
    ip: IpAddr,
    owner: Arc<Handshakes>,
}

impl Handshakes {
    /// Counts a new connection from `ip`; None when `limit` (non-zero) are already counted.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: u64) -> Option<HandshakeTicket> {
        let mut map = self.by_ip.lock().expect("handshakes");
        let n = map.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(HandshakeTicket {
            ip,
            owner: self.clone(),
        })
    }

    pub fn pending(&self, ip: IpAddr) -> u64 {
        self.by_ip
            .lock()
            .expect("handshakes")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut map = self.owner.by_ip.lock().expect("handshakes");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_address_and_release() {
        let h = Arc::new(Handshakes::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = h.enter(a, 2).unwrap();
        let _t2 = h.enter(a, 2).unwrap();
        assert!(h.enter(a, 2).is_none());
        assert!(h.enter(b, 2).is_some(), "another address is not affected");
        drop(t1);
        assert_eq!(h.pending(a), 1);
        assert!(h.enter(a, 2).is_some());
        assert!(h.enter(a, 0).is_some(), "0 = no limit");
    }
}
