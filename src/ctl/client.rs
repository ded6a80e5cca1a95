//! The small HTTP(S) client tiproxyctl talks to the status port with: one request per
//! connection over hyper's HTTP/1 client, rustls for HTTPS.

use crate::config::TlsConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the proxy's status port is and how to speak to it.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// A ready `Authorization` header value.
    pub authorization: Option<String>,
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The proxy could not be reached or did not answer HTTP; names the URL.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the proxy at {url}: {cause}")]
pub struct Unreachable {
    pub url: String,
    #[source]
    pub cause: Cause,
}

/// Which step of reaching the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no connection within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    NoAnswer,
}

impl Target {
    /// `ca`, `cert`, `key` and `insecure` select HTTPS; none of them means plain HTTP.
    pub fn new(
        host: &str,
        port: u16,
        tls: &TlsConfig,
        credentials: Option<(&str, &str)>,
    ) -> Result<Self, crate::proxy::tls::TlsSetupError> {
        let tls = crate::proxy::tls::client_config(tls)?;
        let authorization = credentials.map(|(u, p)| {
            use base64::Engine;
            let raw = format!("{u}:{p}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            authorization,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority())
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Unreachable> {
        let url = self.url(path);
        let fail = |cause: Cause| Unreachable {
            url: url.clone(),
            cause,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority())
            .header(
                "user-agent",
                concat!("tiproxyctl/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        if body.is_some() {
            req = req.header("content-type", "application/toml");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| fail(e.into()))?;
        let exchange = async {
            let tcp = crate::timer::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| Cause::ConnectTimeout)?
            .map_err(Cause::Connect)?;
            match &self.tls {
                Some(cfg) => {
                    let name = crate::proxy::tls::server_name(&self.authority());
                    let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(Cause::Tls)?;
                    send(stream, req).await
                }
                None => send(tcp, req).await,
            }
        };
        match crate::timer::timeout(TIMEOUT, exchange).await {
            Ok(r) => r.map_err(fail),
            Err(_) => Err(fail(Cause::NoAnswer)),
        }
    }
}

async fn send<S>(io: S, req: Request<Full<Bytes>>) -> Result<Answer, Cause>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
