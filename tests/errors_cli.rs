//! Every proxy-made error as a user sees it in the stock `mariadb` CLI (libmariadb), which turns
//! a server-sent code in the client range into "malformed packet": each case asserts the CLI
//! prints our code and sentence. The no-backend error is also read through PyMySQL and
//! mysql-connector-python, the drivers most Python users have, and through go-sql-driver/mysql
//! and Connector/J.

mod common;

use common::cli::CmdOut;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A `mariadb` CLI process reading SQL from a pipe, so a test can act between statements.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl Cli {
    fn start(port: u16, sql: Option<&str>) -> Cli {
        common::tools::require("mariadb CLI", &["mariadb"]).expect("mariadb CLI");
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg("-h127.0.0.1")
            .arg(format!("-P{port}"))
            .arg(format!("-u{APP_USER}"))
            .arg(format!("-p{APP_PASS}"))
            .arg("--connect-timeout=20")
            // --unbuffered: flush each result, so a test can read it while the CLI waits for more.
            .args(["-N", "-B", "--unbuffered", "test"]);
        if let Some(sql) = sql {
            cmd.arg("-e").arg(sql);
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .expect("spawn mariadb");
        let mut cli = Cli {
            child,
            stdin: None,
            dir,
        };
        cli.stdin = cli.child.stdin.take();
        cli
    }

    fn send(&mut self, sql: &str) {
        let pipe = self.stdin.as_mut().expect("stdin still open");
        pipe.write_all(sql.as_bytes()).unwrap();
        pipe.write_all(b"\n").unwrap();
        pipe.flush().unwrap();
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    /// Closes stdin and waits (at most `limit`) for the CLI to exit.
    fn finish(mut self, limit: Duration) -> CmdOut {
        self.stdin = None;
        let start = Instant::now();
        let mut status = None;
        let mut timed_out = false;
        for _ in 0..100_000 {
            if let Some(s) = self.child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            if start.elapsed() > limit {
                timed_out = true;
                let _ = self.child.kill();
                status = self.child.wait().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        CmdOut {
            stdout: read("out"),
            stderr: read("err"),
            code: status.and_then(|s| s.code()),
            timed_out,
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the CLI failed and printed `ERROR <code> (<state>)` with `sentence`, never the
/// client library's "malformed packet" stand-in.
#[track_caller]
fn assert_printed(out: &CmdOut, code: u16, state: &str, sentence: &str) {
    eprintln!("the CLI printed: {}", out.stderr.trim());
    assert!(!out.timed_out, "the CLI hung: {out:?}");
    assert!(!out.ok(), "the CLI succeeded: {out:?}");
    assert!(
        !out.stderr.contains("malformed packet"),
        "the CLI hid our error: {out:?}"
    );
    assert!(
        out.stderr.contains(&format!("ERROR {code} ({state})")),
        "expected ERROR {code} ({state}): {out:?}"
    );
    assert!(
        out.stderr.contains(sentence),
        "expected the sentence {sentence:?}: {out:?}"
    );
}

fn cli(port: u16, sql: &str) -> CmdOut {
    Cli::start(port, Some(sql)).finish(Duration::from_secs(60))
}

#[test]
fn no_backend_shows_9001_in_the_cli() {
    let proxy = Proxy::start(&ProxyConfig::new(vec![]));
    let out = cli(proxy.port(), "SELECT 1");
    assert_printed(&out, 9001, "08S01", "No backend available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_unreachable_shows_9001_naming_pd_in_the_cli() {
    let pd = common::pd::free_port();
    let proxy = common::pd::Proxy::start(&format!("pd-addrs = \"127.0.0.1:{pd}\""), "").await;
    // The first connections may come before the proxy has tried PD once; it says so within seconds.
    let port = proxy.port;
    let out = tokio::task::spawn_blocking(move || {
        poll_until(Duration::from_secs(30), || {
            let out = cli(port, "SELECT 1");
            out.stderr.contains("PD").then_some(out)
        })
    })
    .await
    .unwrap()
    .expect("the CLI never named PD");
    assert_printed(&out, 9001, "08S01", "No backend available");
    assert!(out.stderr.contains("unreachable"), "{out:?}");
}

#[test]
fn max_connections_shows_1040_in_the_cli() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.max_connections = 2;
    let proxy = Proxy::start(&cfg);
    // Bounded retries: the harness's own is-it-listening connect may still count for a moment.
    let login = || {
        poll_until(Duration::from_secs(10), || {
            RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).ok()
        })
        .expect("a session under the limit")
    };
    let _held = [login(), login()];
    let out = cli(proxy.port(), "SELECT 1");
    // Sent in place of the greeting, as MariaDB itself does; the CLI, which asks for TLS by
    // default, then prints it inside its own 2002 line ("... cannot be verified: 1040 - ...").
    assert!(!out.ok() && !out.timed_out, "{out:?}");
    assert!(!out.stderr.contains("malformed packet"), "{out:?}");
    assert!(
        out.stderr.contains("ERROR 1040 (08004)")
            || out.stderr.contains("1040 - Too many connections"),
        "the CLI did not show 1040: {out:?}"
    );
    assert!(
        out.stderr.contains("Too many connections: the proxy"),
        "{out:?}"
    );
}

/// Forwards one connection from a listener to `target`, holding what the client sends for
/// `hold` before passing it on, so a real client's handshake response arrives late.
fn delaying_relay(target: String, hold: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let server = TcpStream::connect(&target).unwrap();
        let timeout = Some(Duration::from_secs(30));
        for s in [&client, &server] {
            s.set_read_timeout(timeout).unwrap();
        }
        let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let upstream = std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut first = true;
            while let Ok(n) = c_read.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if first {
                    std::thread::sleep(hold);
                    first = false;
                }
                if s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let (mut s_read, mut c_write) = (server, client);
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = s_read.read(&mut buf) {
            if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(std::net::Shutdown::Both);
        let _ = upstream.join();
    });
    port
}

#[test]
fn handshake_timeout_shows_1159_in_the_cli() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.client_handshake_timeout = 1;
    let proxy = Proxy::start(&cfg);
    let relay = delaying_relay(proxy.addr(), Duration::from_secs(3));
    let out = cli(relay, "SELECT 1");
    assert_printed(&out, 1159, "08S01", "Handshake timeout");
}

/// True once `db` runs a statement starting with `prefix` (seen in its process list).
fn running(db: &MariaDb, prefix: &str) -> bool {
    let n = db.sql(&format!(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE '{prefix}%'"
    ));
    n.trim() != "0"
}

#[test]
fn backend_lost_mid_query_shows_9003_in_the_cli() {
    let (mut db, proxy) = common::db_and_proxy();
    let cli = Cli::start(proxy.port(), Some("SELECT SLEEP(30)"));
    poll_until(Duration::from_secs(20), || {
        running(&db, "SELECT SLEEP(30)").then_some(())
    })
    .expect("the SLEEP never reached the backend");
    db.kill();
    let out = cli.finish(Duration::from_secs(60));
    assert_printed(
        &out,
        9003,
        "08007",
        "whether it took effect (or committed) is unknown",
    );
    assert!(
        out.stderr.contains("Reconnect and check its effect"),
        "{out:?}"
    );
}

#[test]
fn failover_timeout_shows_1152_in_the_cli() {
    let dbs = MariaDb::start_many(2);
    let mut cfg = ProxyConfig::new(vec![dbs[0].addr(), dbs[1].addr()]);
    let proxy = Proxy::start(&cfg);
    let mut cli = Cli::start(proxy.port(), None);
    cli.send("BEGIN; SELECT @@port;");
    let port: u16 = poll_until(Duration::from_secs(20), || cli.stdout().trim().parse().ok())
        .expect("the CLI never printed its backend's port");
    // The open transaction pins the session to the failed backend until failover-timeout.
    cfg.fail_backend_list = vec![format!("127.0.0.1:{port}")];
    cfg.failover_timeout = 1;
    proxy.rewrite_config(&cfg);
    poll_until(Duration::from_secs(20), || {
        proxy
            .log()
            .contains("closing session still on a fail-backend-list backend")
            .then_some(())
    })
    .expect("the proxy never gave up on the session");
    cli.send("SELECT 2;");
    let out = cli.finish(Duration::from_secs(60));
    assert_printed(&out, 1152, "08S01", "fail-backend-list");
}

/// Runs `script` with the machine's python3 (the drivers come from scripts/install-deps.sh);
/// None when python3 or `module` is missing, after tools::missing had its say.
fn python(module: &str, script: &str, dir: &Path) -> Option<CmdOut> {
    common::tools::require("python3", &["python3"])?;
    let probe = common::cli::run(
        Command::new("python3").args(["-c", &format!("import {module}")]),
        Duration::from_secs(30),
    );
    if !probe.ok() {
        common::tools::missing(&format!("Python module {module}"), &probe.stderr);
        return None;
    }
    let path = dir.join("client.py");
    std::fs::write(&path, script).unwrap();
    Some(common::cli::run(
        Command::new("python3").arg(&path),
        Duration::from_secs(60),
    ))
}

#[test]
fn no_backend_sentence_reaches_python_drivers() {
    let proxy = Proxy::start(&ProxyConfig::new(vec![]));
    let dir = tempfile::tempdir().unwrap();
    let port = proxy.port();
    let clients = [
        (
            "pymysql",
            format!(
                "import pymysql\ntry:\n    pymysql.connect(host='127.0.0.1', port={port}, user='{APP_USER}', \
                 password='{APP_PASS}', database='test')\nexcept pymysql.err.MySQLError as e:\n    print(e.args)\n"
            ),
        ),
        (
            "mysql.connector",
            format!(
                "import mysql.connector\ntry:\n    mysql.connector.connect(host='127.0.0.1', port={port}, \
                 user='{APP_USER}', password='{APP_PASS}', database='test')\n\
                 except mysql.connector.Error as e:\n    print(e.errno, e.sqlstate, e.msg)\n"
            ),
        ),
    ];
    for (module, script) in clients {
        let Some(out) = python(module, &script, dir.path()) else {
            continue;
        };
        assert!(out.ok() && !out.timed_out, "{module}: {out:?}");
        assert!(
            out.stdout.contains("9001") && out.stdout.contains("No backend available"),
            "{module} did not show our error: {out:?}"
        );
        assert!(!out.stdout.contains("malformed"), "{module}: {out:?}");
    }
}

const GO_PING: &str = r#"package main

import (
	"database/sql"
	"fmt"
	"os"

	_ "github.com/go-sql-driver/mysql"
)

func main() {
	db, err := sql.Open("mysql", os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println(db.Ping())
}
"#;

#[test]
fn no_backend_sentence_reaches_go_sql_driver() {
    let proxy = Proxy::start(&ProxyConfig::new(vec![]));
    let dir = tempfile::tempdir().unwrap();
    let Some(client) = common::go::build(dir.path(), GO_PING) else {
        return;
    };
    let dsn = format!("{APP_USER}:{APP_PASS}@tcp(127.0.0.1:{})/test", proxy.port());
    let out = common::cli::run(Command::new(&client).arg(dsn), Duration::from_secs(60));
    assert!(
        out.stdout
            .contains("Error 9001 (08S01): No backend available"),
        "{out:?}"
    );
}

const JAVA_PING: &str = r#"import java.sql.*;

public class Ping {
    public static void main(String[] args) {
        try (Connection c = DriverManager.getConnection(args[0], "app", "secret")) {
            System.out.println("connected");
        } catch (SQLException e) {
            System.out.println(e.getErrorCode() + " " + e.getSQLState() + " " + e.getMessage());
        }
    }
}
"#;

/// Connector/J from Maven Central (through `mvn dependency:get`); None (after tools::missing)
/// without Java or Maven.
fn connector_j() -> Option<std::path::PathBuf> {
    common::tools::require("java", &["java"])?;
    common::tools::require("maven", &["mvn"])?;
    let (group, name, version) = ("com/mysql", "mysql-connector-j", "9.1.0");
    let out = common::cli::run(
        Command::new("mvn").args([
            "-q",
            "-B",
            "dependency:get",
            &format!("-Dartifact=com.mysql:{name}:{version}"),
            "-Dtransitive=false",
        ]),
        Duration::from_secs(600),
    );
    assert!(out.ok(), "mvn dependency:get: {out:?}");
    let home = std::env::var("HOME").unwrap_or_default();
    let jar = Path::new(&home).join(format!(
        ".m2/repository/{group}/{name}/{version}/{name}-{version}.jar"
    ));
    assert!(jar.is_file(), "no {}", jar.display());
    Some(jar)
}

#[test]
fn no_backend_sentence_reaches_connector_j() {
    let proxy = Proxy::start(&ProxyConfig::new(vec![]));
    let Some(jar) = connector_j() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("Ping.java");
    std::fs::write(&src, JAVA_PING).unwrap();
    let url = format!(
        "jdbc:mysql://127.0.0.1:{}/test?sslMode=DISABLED&connectTimeout=20000",
        proxy.port()
    );
    let out = common::cli::run(
        Command::new("java").arg("-cp").arg(&jar).arg(&src).arg(url),
        Duration::from_secs(120),
    );
    assert!(
        out.stdout.contains("9001 08S01 No backend available"),
        "{out:?}"
    );
}
