//! One `GET /metrics` from a TiDB status port. HTTP/1.0 so the answer is neither chunked nor
//! kept alive (the body ends when the server closes), no Accept-Encoding so it is plain text,
//! and the body is bounded so a misbehaving port cannot make the proxy buffer without limit.

use super::parse::{parse, Sample};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TiDB's exposition is a few hundred KiB; anything past this is cut and the rest ignored.
pub const MAX_BODY: usize = 8 << 20;

/// Why a TiDB's figures could not be read; the text names the status address.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("metrics at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics at {addr}: no HTTP answer")]
    NotHttp { addr: String },
    #[error("metrics at {addr} answered {code}")]
    Answered { addr: String, code: u16 },
    #[error("metrics at {addr}: no answer within {} ms", .limit.as_millis())]
    Timeout { addr: String, limit: Duration },
}

/// The factor figures at `<status_addr>/metrics`, or why there are none.
pub async fn fetch_sample(status_addr: &str, timeout: Duration) -> Result<Sample, FetchError> {
    let addr = || status_addr.to_owned();
    let fut = async {
        let err = |source| FetchError::Io {
            addr: addr(),
            source,
        };
        let mut tcp = TcpStream::connect(status_addr).await.map_err(err)?;
        let req =
            format!("GET /metrics HTTP/1.0\r\nHost: {status_addr}\r\nUser-Agent: tiproxy\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.map_err(err)?;
        let mut body = Vec::new();
        (&mut tcp)
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .await
            .map_err(err)?;
        let text = String::from_utf8_lossy(&body);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| FetchError::NotHttp { addr: addr() })?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(200) => Ok(parse(rest)),
            Some(code) => Err(FetchError::Answered { addr: addr(), code }),
            None => Err(FetchError::NotHttp { addr: addr() }),
        }
    };
    crate::timer::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                addr: addr(),
                limit: timeout,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn reads_a_body_and_refuses_errors() {
        let ok = serve_once(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\ntidb_server_maxprocs 4\n",
        )
        .await;
        let s = fetch_sample(&ok, Duration::from_secs(2)).await.unwrap();
        assert_eq!(s.maxprocs, Some(4.0));
        let bad = serve_once("HTTP/1.0 404 Not Found\r\n\r\n").await;
        let e = fetch_sample(&bad, Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("404"), "{e}");
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(fetch_sample(&gone, Duration::from_secs(2)).await.is_err());
    }
}
