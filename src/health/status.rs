//! The TiDB status-port probe: `GET /status` over plain HTTP/1.1. TiDB answers 200 while it
//! serves and 500 once it starts a graceful shutdown, which is when sessions should leave it.

use super::StatusError;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Ok when `<status_addr>/status` answers 200 within `timeout`; else a reason naming the check.
pub async fn probe_status(status_addr: &str, timeout: Duration) -> Result<(), StatusError> {
    match status_code(status_addr, timeout).await? {
        200 => Ok(()),
        code => Err(StatusError::Answered {
            addr: status_addr.to_owned(),
            code,
        }),
    }
}

/// The HTTP status code `<status_addr>/status` answers within `timeout`; Err when it is not
/// reachable or does not speak HTTP.
pub async fn status_code(status_addr: &str, timeout: Duration) -> Result<u16, StatusError> {
    let io = |source| StatusError::Io {
        addr: status_addr.to_owned(),
        source,
    };
    let fut = async {
        let mut tcp = TcpStream::connect(status_addr).await.map_err(io)?;
        let req = format!(
            "GET /status HTTP/1.1\r\nHost: {status_addr}\r\nUser-Agent: tiproxy\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.map_err(io)?;
        // Only the status line matters; it fits in the first read of any sane server, and the
        // rest of the answer is left unread when the socket drops.
        let mut buf = [0u8; 256];
        let mut len = 0;
        while len < buf.len() && !buf[..len].contains(&b'\n') {
            let n = tcp.read(&mut buf[len..]).await.map_err(io)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        parse_status_code(&buf[..len]).ok_or_else(|| StatusError::NotHttp {
            addr: status_addr.to_owned(),
        })
    };
    match crate::timer::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StatusError::Timeout {
            addr: status_addr.to_owned(),
            limit: timeout,
        }),
    }
}

/// The code in `HTTP/1.x NNN reason`.
fn parse_status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_code(b"HTTP/1.0 500 Internal"), Some(500));
        assert_eq!(parse_status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_code(b""), None);
    }

    async fn serve_once(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_decide_health() {
        let t = Duration::from_secs(5);
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
        assert!(probe_status(&ok, t).await.is_ok());
        let draining = serve_once("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let e = probe_status(&draining, t).await.unwrap_err().to_string();
        assert_eq!(e, format!("status port {draining} answered 500"));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap().to_string();
        drop(l);
        assert!(probe_status(&closed, t)
            .await
            .unwrap_err()
            .to_string()
            .contains(&closed));
    }
}
