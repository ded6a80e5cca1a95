//! A private mariadbd per test: its own datadir, port and socket, killed and deleted on drop.

use super::cli::{self, CmdOut};
use super::net::{free_port, poll_until};
use super::tls::{self, CertFiles};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// Users every server gets, so tests can log in without knowing setup details.
pub const APP_USER: &str = "app";
pub const APP_PASS: &str = "secret";
pub const ED_USER: &str = "edu";
pub const ED_PASS: &str = "edsecret";

const SETUP_SQL: &str = "CREATE DATABASE IF NOT EXISTS test; \
    CREATE USER 'app'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('secret'); \
    GRANT ALL ON *.* TO 'app'@'%'; \
    INSTALL SONAME 'auth_ed25519'; \
    CREATE USER 'edu'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edsecret'); \
    GRANT ALL ON *.* TO 'edu'@'%';";

pub struct MariaDb {
    child: Option<Child>,
    port: u16,
    // Declared last so the process is gone before its datadir is removed.
    dir: TempDir,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        Self::start_with(false)
    }

    /// A server that offers TLS with a fresh self-signed certificate.
    pub fn start_tls() -> MariaDb {
        Self::start_with(true)
    }

    /// Starts `n` plain servers at once; each start is mostly waiting on InnoDB, so threads help.
    pub fn start_many(n: usize) -> Vec<MariaDb> {
        let handles: Vec<_> = (0..n).map(|_| std::thread::spawn(MariaDb::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("mariadb start thread"))
            .collect()
    }

    fn start_with(with_tls: bool) -> MariaDb {
        let mut dir = tempfile::Builder::new()
            .prefix("mdb")
            .tempdir()
            .expect("tempdir");
        let datadir = dir.path().join("data");
        // A private tmpdir: bootstraps running in parallel in the shared /tmp were seen to
        // fail with "Error on delete of '/tmp/#sql-temptable-...'".
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        let out = cli::run(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", datadir.display()))
                .arg("--auth-root-authentication-method=socket")
                .arg("--user=root")
                .arg("--skip-test-db")
                .arg(format!("--tmpdir={}", tmp.display())),
            Duration::from_secs(60),
        );
        assert!(out.ok(), "mariadb-install-db failed: {out:?}");
        let certs = with_tls.then(|| tls::self_signed(dir.path(), "mariadb"));
        // A port picked by free_port can be taken by a parallel test before mariadbd binds it;
        // a few fresh tries make that race harmless.
        for attempt in 0..3 {
            let port = free_port();
            let mut db = MariaDb {
                child: Some(spawn_mariadbd(&dir, port, certs.as_ref(), attempt)),
                port,
                dir,
            };
            if db.wait_ready() {
                db.sql(SETUP_SQL);
                return db;
            }
            let log = db.error_log();
            if let Some(mut child) = db.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            assert!(
                log.contains("Address already in use") || log.contains("Can't start server"),
                "mariadbd did not start on port {port}:\n{log}"
            );
            dir = std::mem::replace(&mut db.dir, TempDir::new().expect("tempdir"));
        }
        panic!("mariadbd could not bind a free port in 3 tries");
    }

    /// Bounded wait until root can run a query over the socket, or the process died.
    fn wait_ready(&mut self) -> bool {
        let sock = self.socket();
        let child = self.child.as_mut().expect("child");
        poll_until(Duration::from_secs(30), || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            let out = root_cli(&sock, "SELECT 1", Duration::from_secs(5));
            out.ok().then_some(true)
        })
        .unwrap_or(false)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The mariadbd process id, for SIGSTOP/SIGCONT; `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The self-signed certificate a `start_tls` server presents (its own CA).
    pub fn tls_cert(&self) -> std::path::PathBuf {
        self.dir.path().join("mariadb-cert.pem")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn socket(&self) -> String {
        self.dir.path().join("sock").display().to_string()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the unix socket and returns the tab-separated output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        let out = root_cli(&self.socket(), sql, Duration::from_secs(60));
        assert!(out.ok(), "root SQL failed: {sql}\n{out:?}");
        out.stdout.trim().to_string()
    }

    /// SIGKILL, as if the machine lost the backend; the client side sees a dead socket.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its datadir and port after `kill` or `stop` (crash recovery
    /// included), for chaos tests that check what a killed server kept.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        self.child = Some(spawn_mariadbd(&self.dir, self.port, None, 0));
        assert!(
            self.wait_ready(),
            "mariadbd did not restart on port {}:\n{}",
            self.port,
            self.error_log()
        );
    }

    /// Clean shutdown with SIGTERM, falling back to SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            cli::send_signal(child.id(), "TERM");
            let exited = poll_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_mariadbd(dir: &TempDir, port: u16, certs: Option<&CertFiles>, attempt: u32) -> Child {
    let d = dir.path();
    let mut cmd = Command::new("/usr/sbin/mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", d.join("data").display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", d.join("sock").display()))
        .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
        .arg(format!("--log-error={}", d.join("error.log").display()))
        .arg(format!("--tmpdir={}", d.join("tmp").display()))
        .arg("--user=root")
        .arg("--skip-log-bin")
        .arg("--max-allowed-packet=64M")
        .arg("--local-infile=1")
        // Keep several servers per test cheap on a 2-core, shared machine.
        .arg("--innodb-buffer-pool-size=32M")
        .arg("--innodb-log-file-size=16M")
        .arg("--performance-schema=OFF")
        .arg("--key-buffer-size=1M")
        .arg("--skip-name-resolve")
        // Tests open many short sessions from one host; never let that host get blocked.
        .arg("--max-connect-errors=1000000")
        .arg(format!("--server-id={}", attempt + 1));
    if let Some(c) = certs {
        cmd.arg(format!("--ssl-cert={}", c.cert.display()))
            .arg(format!("--ssl-key={}", c.key.display()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mariadbd")
}

fn root_cli(sock: &str, sql: &str, timeout: Duration) -> CmdOut {
    cli::run(
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={sock}"))
            .args(["-uroot", "-N", "-B", "-e", sql]),
        timeout,
    )
}
