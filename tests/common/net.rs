//! Free loopback ports, bounded waits for a listener to come up, and reading a socket until
//! the proxy closes it.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port that was free a moment ago; the small race with other tests is accepted because
/// every caller retries or fails loudly, never silently talking to the wrong server.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A loopback port nothing listens on (bound, then released): where a server that is gone
/// would have been.
pub fn closed_port() -> u16 {
    free_port()
}

/// `n` distinct ports that were free a moment ago: all are held until the last is picked, so
/// no two can be the same port.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Two distinct ports that were free a moment ago.
pub fn free_port_pair() -> (u16, u16) {
    let p = free_ports(2);
    (p[0], p[1])
}

/// True once 127.0.0.1:`port` accepts TCP, false when `timeout` passes first.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    for _ in 0..10_000 {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    for _ in 0..100_000 {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Everything the proxy sends until it closes the connection. The socket's read timeout must
/// be set: a timeout fails the test, because the proxy was expected to end the connection.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the proxy left the connection open: {e}"),
        }
    }
}
