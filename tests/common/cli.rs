//! Running external commands (the mariadb CLI, sysbench, kill) with a hard time limit.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished (or killed) command left behind.
#[derive(Debug)]
pub struct CmdOut {
    pub stdout: String,
    pub stderr: String,
    /// None when the command was killed by a signal, including our own timeout kill.
    pub code: Option<i32>,
    pub timed_out: bool,
}

impl CmdOut {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd`, killing it after `timeout`. Output pipes are drained on threads so a chatty
/// command can never block on a full pipe while we wait for it.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOut {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let mut timed_out = false;
    let mut status = None;
    for _ in 0..1_000_000 {
        if let Some(s) = child.try_wait().expect("try_wait") {
            status = Some(s);
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            status = child.wait().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    CmdOut {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        code: status.and_then(|s| s.code()),
        timed_out,
    }
}

/// `mariadb` over TCP to 127.0.0.1:`port`; `--no-defaults` keeps the machine's my.cnf out of it.
pub fn mariadb(port: u16, user: &str, pass: &str, extra: &[&str], sql: &str) -> CmdOut {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg("-h127.0.0.1")
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .arg(format!("-p{pass}"))
        .arg("--connect-timeout=10")
        .args(["-N", "-B"])
        .args(extra)
        .arg("-e")
        .arg(sql);
    run(&mut cmd, Duration::from_secs(60))
}

/// Sends `sig` (e.g. "INT") to `pid` through the `kill` command, so the tests need no libc crate.
pub fn send_signal(pid: u32, sig: &str) {
    let out = run(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()),
        Duration::from_secs(10),
    );
    assert!(out.ok(), "kill -{sig} {pid}: {out:?}");
}
