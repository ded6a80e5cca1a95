//! Binds the SQL port with the longest accept queue the kernel allows, so a burst of new
//! connections (a pool warming up, every application restarting at once) waits in the queue
//! instead of losing its SYNs and retrying a second later.

use std::io;
use tokio::net::TcpListener;

/// The queue length asked for; Linux caps it at `net.core.somaxconn` (4096 by default since
/// 5.4), which is what this asks for in effect, as Go's listener (the Go TiProxy's) does.
/// The standard library's bind asks for 128.
const BACKLOG: i32 = i32::MAX;

/// Binds `addr` (`host:port`, looked up like `TcpListener::bind` does) to the first of its
/// addresses that accepts, with address reuse on as every server sets it, and listens.
pub async fn bind_sql(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        match bind_one(sa) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the address names no host")
    }))
}

fn bind_one(sa: std::net::SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(sa),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&sa.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_until_accepted() {
        // The standard library's queue of 128 would leave the later connects unanswered.
        let listener = bind_sql("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel's cap, where it is lower than the burst, is all any listener gets.
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        let burst = cap.min(300);
        let clients: Vec<_> = tokio::task::spawn_blocking(move || {
            (0..burst)
                .map(|i| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                        .unwrap_or_else(|e| panic!("connection {i} of the burst failed: {e}"))
                })
                .collect()
        })
        .await
        .unwrap();
        for _ in &clients {
            let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept());
            accepted.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_refused() {
        let first = bind_sql("127.0.0.1:0").await.unwrap();
        let taken = first.local_addr().unwrap().to_string();
        let e = bind_sql(&taken).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
