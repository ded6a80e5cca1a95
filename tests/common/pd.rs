//! Helpers for the discovery tests: a real etcd, MariaDB servers (`mariadb.rs`) standing in
//! for TiDB SQL ports, a switchable `/status` endpoint, topology writes shaped like TiDB's, and the proxy
//! binary started from a config file. Everything listens on 127.0.0.1 and free ports, and
//! every wait is bounded.

#[allow(unused_imports)]
pub use super::mariadb::MariaDb as Mariadb;
#[allow(unused_imports)]
pub use super::net::free_port;

use etcd_client::{Client, PutOptions};
use mysql_async::prelude::*;
use std::future::Future;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Polls `check` every 100 ms until it yields a value or `limit` passes.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub async fn start() -> Etcd {
        // Held at once, so the client and peer ports can never be the same.
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: a.local_addr().unwrap().port(),
            peer_port: b.local_addr().unwrap().port(),
        };
        drop((a, b));
        e.spawn().await;
        e
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd is installed (Debian package etcd-server)");
        self.child = Some(child);
        let ep = self.endpoint();
        wait_for("etcd to answer", Duration::from_secs(20), || {
            let ep = ep.clone();
            async move {
                let mut c = Client::connect([ep], None).await.ok()?;
                tokio::time::timeout(Duration::from_secs(1), c.get("/", None))
                    .await
                    .ok()?
                    .ok()
            }
        })
        .await;
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None).await.unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TiDB-like `/status` endpoint whose answer can be switched between 200 and 500.
pub struct StatusServer {
    pub port: u16,
    code: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    pub async fn start() -> StatusServer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let code = Arc::new(AtomicU16::new(200));
        let c = code.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let code = c.load(Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let body = r#"{"connections":0,"version":"8.0.11-TiDB","git_hash":"x"}"#;
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        StatusServer { port, code, task }
    }

    pub fn set(&self, code: u16) {
        self.code.store(code, Ordering::Relaxed);
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes a TiDB's topology the way TiDB does: `info` without a lease, `ttl` under one.
pub async fn register_tidb(etcd: &mut Client, sql_addr: &str, status_port: u16) -> i64 {
    let info = format!(
        r#"{{"version":"8.0.11-TiDB-v7.5.0","git_hash":"abc","ip":"127.0.0.1","status_port":{status_port},"deploy_path":"/tmp","start_timestamp":1700000000,"labels":{{"zone":"z1"}}}}"#
    );
    etcd.put(format!("/topology/tidb/{sql_addr}/info"), info, None)
        .await
        .unwrap();
    let lease = etcd.lease_grant(120, None).await.unwrap().id();
    etcd.put(
        format!("/topology/tidb/{sql_addr}/ttl"),
        "1700000000000000000",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    lease
}

/// The proxy binary with a config file and a log file.
pub struct Proxy {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub api_port: u16,
}

impl Proxy {
    /// `extra` is appended to a config that sets addr, api addr, logging and fast health checks.
    pub async fn start(extra_proxy: &str, extra: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        // Both held at once, so the two can never be the same port.
        let (port, api_port) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            )
        };
        let log = dir.path().join("proxy.log");
        let cfg = format!(
            "[proxy]\naddr = \"127.0.0.1:{port}\"\ngraceful-close-conn-timeout = 3\n{extra_proxy}\n\
             [api]\naddr = \"127.0.0.1:{api_port}\"\n\
             [log]\nlevel = \"debug\"\n[log.log-file]\nfilename = \"{}\"\n\
             [health]\ninterval-ms = 200\ntimeout-ms = 1000\nfailure-threshold = 1\nrecovery-threshold = 1\n{extra}\n",
            log.display()
        );
        let cfg_path = dir.path().join("proxy.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tiproxy"))
            .arg("--config")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proxy {
            child: Some(child),
            dir,
            port,
            api_port,
        };
        let addr = format!("127.0.0.1:{port}");
        wait_for("the proxy to listen", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok() }
        })
        .await;
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded) for a graceful exit.
    pub async fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("mysql://app:secret@127.0.0.1:{}/", self.port)
    }

    /// A new session through the proxy; returns it with the backend port it landed on.
    pub async fn session(&self) -> Result<(mysql_async::Conn, u16), String> {
        let opts = mysql_async::Opts::from_url(&self.url()).unwrap();
        let fut = async {
            let mut c = mysql_async::Conn::new(opts)
                .await
                .map_err(|e| e.to_string())?;
            let port: Option<u16> = c
                .query_first("SELECT @@port")
                .await
                .map_err(|e| e.to_string())?;
            Ok((c, port.unwrap_or(0)))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "no answer within 10s".to_string())?
    }

    /// The backend port a fresh, immediately closed session lands on.
    pub async fn landing_port(&self) -> Result<u16, String> {
        let (c, port) = self.session().await?;
        let _ = c.disconnect().await;
        Ok(port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            // Per-session debug lines drown the story; keep the rest.
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("[session.rs:"))
                .collect();
            eprintln!(
                "--- proxy log without session lines ---\n{}",
                tail.join("\n")
            );
            let keep = std::env::temp_dir().join(format!("tiproxy-disc-{}.log", self.port));
            if std::fs::write(&keep, &log).is_ok() {
                eprintln!("--- whole log kept at {} ---", keep.display());
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
