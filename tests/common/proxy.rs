//! The tiproxy process under test: config built from a struct, spawned, waited for, killed on drop.

use super::cli;
use super::net::{free_port_pair, poll_until, wait_for_port};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// TLS offered to clients.
#[derive(Clone, Debug)]
pub enum ServerTls {
    Files { cert: PathBuf, key: PathBuf },
    AutoCerts,
}

/// TLS used towards backends.
#[derive(Clone, Debug)]
pub enum SqlTls {
    Ca(PathBuf),
    SkipCa,
}

/// Every key the tests set. Rendered once into TOML so each table header appears exactly once.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub backends: Vec<String>,
    pub max_connections: u64,
    pub graceful_close_conn_timeout: u64,
    pub graceful_wait_before_shutdown: u64,
    pub backend_connect_timeout: u64,
    pub client_handshake_timeout: u64,
    pub client_read_timeout: u64,
    pub health_interval_ms: u64,
    pub failure_threshold: u64,
    pub recovery_threshold: u64,
    pub require_backend_tls: bool,
    pub server_tls: Option<ServerTls>,
    pub sql_tls: Option<SqlTls>,
    /// `[proxy.service-account]` user and password.
    pub service_account: Option<(String, String)>,
    pub fail_backend_list: Vec<String>,
    /// `[proxy] proxy-protocol`, left out of the file when empty.
    pub proxy_protocol: String,
    pub failover_timeout: u64,
    /// Raw TOML lines added to `[proxy]`, `[api]`, and after everything (new tables only).
    pub extra_proxy: String,
    pub extra_api: String,
    pub extra_tables: String,
    /// `[proxy] backend-status-addrs`: (SQL address, TiDB status address) of static backends.
    pub backend_status_addrs: Vec<(String, String)>,
    /// More SQL ports on 127.0.0.1 after the first, for port routing rules.
    pub more_sql_ports: Vec<u16>,
}

impl ProxyConfig {
    pub fn new(backends: Vec<String>) -> ProxyConfig {
        ProxyConfig {
            backends,
            max_connections: 0,
            graceful_close_conn_timeout: 15,
            graceful_wait_before_shutdown: 0,
            backend_connect_timeout: 5,
            client_handshake_timeout: 10,
            client_read_timeout: 30,
            // Fast probes so tests that kill a backend do not wait long for the proxy to notice.
            health_interval_ms: 500,
            failure_threshold: 2,
            recovery_threshold: 1,
            require_backend_tls: false,
            server_tls: None,
            sql_tls: None,
            service_account: None,
            fail_backend_list: Vec::new(),
            proxy_protocol: String::new(),
            failover_timeout: 60,
            extra_proxy: String::new(),
            extra_api: String::new(),
            extra_tables: String::new(),
            backend_status_addrs: Vec::new(),
            more_sql_ports: Vec::new(),
        }
    }

    fn render(&self, port: u16, api_port: u16, log_file: &str) -> String {
        let quoted: Vec<String> = self.backends.iter().map(|b| format!("{b:?}")).collect();
        let mut s = String::new();
        let _ = writeln!(s, "[proxy]");
        let more: String = self
            .more_sql_ports
            .iter()
            .map(|p| format!(",127.0.0.1:{p}"))
            .collect();
        let _ = writeln!(s, "addr = \"127.0.0.1:{port}{more}\"");
        let _ = writeln!(s, "backend-addrs = [{}]", quoted.join(", "));
        let _ = writeln!(s, "max-connections = {}", self.max_connections);
        let _ = writeln!(
            s,
            "graceful-close-conn-timeout = {}",
            self.graceful_close_conn_timeout
        );
        let _ = writeln!(
            s,
            "graceful-wait-before-shutdown = {}",
            self.graceful_wait_before_shutdown
        );
        let _ = writeln!(
            s,
            "backend-connect-timeout = {}",
            self.backend_connect_timeout
        );
        let _ = writeln!(
            s,
            "client-handshake-timeout = {}",
            self.client_handshake_timeout
        );
        let _ = writeln!(s, "client-read-timeout = {}", self.client_read_timeout);
        let failed: Vec<String> = self
            .fail_backend_list
            .iter()
            .map(|b| format!("{b:?}"))
            .collect();
        let _ = writeln!(s, "fail-backend-list = [{}]", failed.join(", "));
        if !self.proxy_protocol.is_empty() {
            let _ = writeln!(s, "proxy-protocol = {:?}", self.proxy_protocol);
        }
        let _ = writeln!(s, "failover-timeout = {}", self.failover_timeout);
        if !self.backend_status_addrs.is_empty() {
            let pairs: Vec<String> = self
                .backend_status_addrs
                .iter()
                .map(|(sql, status)| format!("{sql:?} = {status:?}"))
                .collect();
            let _ = writeln!(s, "backend-status-addrs = {{ {} }}", pairs.join(", "));
        }
        s.push_str(&self.extra_proxy);
        if let Some((user, password)) = &self.service_account {
            let _ = writeln!(
                s,
                "\n[proxy.service-account]\nuser = {user:?}\npassword = {password:?}"
            );
        }
        let _ = writeln!(s, "\n[api]\naddr = \"127.0.0.1:{api_port}\"");
        s.push_str(&self.extra_api);
        let _ = writeln!(s, "\n[log]\nlevel = \"info\"");
        let _ = writeln!(s, "\n[log.log-file]\nfilename = {log_file:?}");
        let _ = writeln!(s, "\n[health]");
        let _ = writeln!(s, "interval-ms = {}", self.health_interval_ms);
        let _ = writeln!(s, "failure-threshold = {}", self.failure_threshold);
        let _ = writeln!(s, "recovery-threshold = {}", self.recovery_threshold);
        let _ = writeln!(s, "\n[security]");
        let _ = writeln!(s, "require-backend-tls = {}", self.require_backend_tls);
        match &self.server_tls {
            Some(ServerTls::Files { cert, key }) => {
                let _ = writeln!(s, "\n[security.server-tls]");
                let _ = writeln!(
                    s,
                    "cert = {:?}\nkey = {:?}",
                    cert.display().to_string(),
                    key.display().to_string()
                );
            }
            Some(ServerTls::AutoCerts) => {
                let _ = writeln!(s, "\n[security.server-tls]\nauto-certs = true");
            }
            None => {}
        }
        match &self.sql_tls {
            Some(SqlTls::Ca(ca)) => {
                let _ = writeln!(
                    s,
                    "\n[security.sql-tls]\nca = {:?}",
                    ca.display().to_string()
                );
            }
            Some(SqlTls::SkipCa) => {
                let _ = writeln!(s, "\n[security.sql-tls]\nskip-ca = true");
            }
            None => {}
        }
        s.push_str(&self.extra_tables);
        s
    }
}

pub struct Proxy {
    child: Option<Child>,
    port: u16,
    api_port: u16,
    dir: TempDir,
}

impl Proxy {
    /// Starts the proxy with `cfg` and waits (at most 30 s) until its SQL port accepts TCP.
    /// Ports are picked free and can be taken by a parallel test before the proxy binds them,
    /// so a start that failed on "Address already in use" is retried with new ports (3 tries).
    pub fn start(cfg: &ProxyConfig) -> Proxy {
        for attempt in 1..=3 {
            match Self::try_start(cfg) {
                Ok(p) => return p,
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("tiproxy did not become ready:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn try_start(cfg: &ProxyConfig) -> Result<Proxy, String> {
        let dir = tempfile::Builder::new()
            .prefix("tiproxy")
            .tempdir()
            .expect("tempdir");
        let (port, api_port) = free_port_pair();
        let log_file = dir.path().join("tiproxy.log");
        let conf = dir.path().join("tiproxy.toml");
        let text = cfg.render(port, api_port, &log_file.display().to_string());
        std::fs::write(&conf, text).expect("write config");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_tiproxy"))
            .arg("--config")
            .arg(&conf)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tiproxy");
        let mut proxy = Proxy {
            child: Some(child),
            port,
            api_port,
            dir,
        };
        let ready = poll_until(Duration::from_secs(30), || {
            let child = proxy.child.as_mut().expect("child");
            if child.try_wait().ok().flatten().is_some() {
                return Some(false);
            }
            wait_for_port(port, Duration::from_millis(100)).then_some(true)
        });
        if ready == Some(true) {
            proxy.wait_readiness_probe_closed();
            Ok(proxy)
        } else {
            Err(format!("port {port}:\n{}", proxy.log()))
        }
    }

    /// The readiness check above is a SQL connection, counted against max-connections until
    /// the proxy sees it close; waits (bounded) until the proxy reports no session, so a test
    /// that fills a small connection table starts from an empty one. A status port this plain
    /// GET cannot read (TLS, auth) ends the wait at once.
    fn wait_readiness_probe_closed(&self) {
        poll_until(Duration::from_secs(10), || {
            let Ok((200, body)) = super::http::http_get(self.api_port, "/api/metrics") else {
                return Some(());
            };
            body.lines()
                .any(|l| l.trim() == "tiproxy_server_connections 0")
                .then_some(())
        });
    }

    /// Rewrites the config file in place (same ports and log file), as an operator would.
    pub fn rewrite_config(&self, cfg: &ProxyConfig) {
        let log_file = self.dir.path().join("tiproxy.log");
        let text = cfg.render(self.port, self.api_port, &log_file.display().to_string());
        std::fs::write(self.config_path(), text).expect("rewrite config");
    }

    /// Writes raw text into the config file, for broken-file cases.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("tiproxy.toml")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy process").id()
    }

    /// Sends a signal by name ("INT", "TERM", "QUIT") with the `kill` command.
    pub fn signal(&self, sig: &str) {
        cli::send_signal(self.pid(), sig);
    }

    /// The exit status if the process ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        poll_until(timeout, || child.try_wait().ok().flatten())
    }

    /// The log file alone, for counting lines.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn log_file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tiproxy.log")).unwrap_or_default()
    }

    /// Log file plus whatever went to stdout and stderr, for assertion messages.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- tiproxy.log\n{}\n--- stdout\n{}\n--- stderr\n{}",
            read("tiproxy.log"),
            read("stdout.log"),
            read("stderr.log")
        )
    }

    /// Stops the process (SIGKILL) and starts it again on the same config file and ports,
    /// waiting (at most 30 s) until the SQL port accepts TCP again.
    pub fn restart(&mut self) {
        self.kill();
        let out = |n: &str| std::fs::File::create(self.dir.path().join(n)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tiproxy"))
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out("stdout.log"))
            .stderr(out("stderr.log"))
            .spawn()
            .expect("spawn tiproxy");
        self.child = Some(child);
        let port = self.port;
        let up = poll_until(Duration::from_secs(30), || {
            wait_for_port(port, Duration::from_millis(100)).then_some(())
        });
        assert!(up.is_some(), "tiproxy did not come back:\n{}", self.log());
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}
