//! Helpers for the TiUP tests: the packaged tarball (built once), a go-built tiup with a private
//! TIUP_HOME and local mirror, the config TiUP writes, and the proxy process TiUP would run.

#[allow(unused_imports)]
pub use super::http::http_get;
#[allow(unused_imports)]
pub use super::net::closed_port;
use std::fs::OpenOptions;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The version the tests package and publish; the nightly is this plus `-nightly`.
pub const TEST_VERSION: &str = "v0.1.0";

/// The bound the contract names: TiUP SIGKILLs a TiProxy that has not exited 10 s after its signal.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to completion within `timeout`, returning (success, stdout + stderr). The
/// output goes through a file so a chatty command cannot block on a full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    // Appending, so the two streams interleave instead of overwriting each other.
    let append = || {
        OpenOptions::new()
            .append(true)
            .open(out.path())
            .expect("open temp file")
    };
    let mut child = Daemon::spawn(cmd.stdin(Stdio::null()).stdout(append()).stderr(append()));
    let status = child.wait_exit(timeout);
    let mut text = String::new();
    let _ = out.reopen().and_then(|mut f| f.read_to_string(&mut text));
    if status.is_none() {
        text.push_str(&format!("\n[killed after {timeout:?}]"));
    }
    (status.is_some_and(|s| s.success()), text)
}

/// The release tarball, built by `packaging/build.sh` once per test binary. Cargo makes a rebuild
/// incremental, so only the first run on a machine pays for the cross build.
pub fn package() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let (ok, out) = run(
            Command::new("packaging/build.sh")
                .current_dir(repo_root())
                .env("VERSION", TEST_VERSION)
                // A fixed commit id: with the real one every commit would relink the binaries.
                .env("GIT_HASH", "tiup-test"),
            Duration::from_secs(1800),
        );
        assert!(ok, "packaging/build.sh failed:\n{out}");
        let path = repo_root().join(format!("dist/tiproxy-{TEST_VERSION}-linux-amd64.tar.gz"));
        assert!(
            path.is_file(),
            "build.sh made no {}:\n{out}",
            path.display()
        );
        path
    })
}

/// The tiup executable: on PATH or in Go's bin dir, else built by `packaging/tools.sh tiup`.
/// Err says why there is none (no Go on this machine), for common::tools::missing.
pub fn tiup() -> Result<PathBuf, String> {
    static TIUP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TIUP.get_or_init(find_or_build_tiup).clone()
}

fn find_or_build_tiup() -> Result<PathBuf, String> {
    let gobin = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("bin"));
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(gobin.clone())
            .map(|d| d.join("tiup"))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if gobin.is_none() {
        return Err("Go is not installed, so tiup cannot be built".into());
    }
    let (ok, out) = run(
        Command::new("packaging/tools.sh")
            .arg("tiup")
            .current_dir(repo_root()),
        Duration::from_secs(900),
    );
    assert!(ok, "Go is installed but building tiup failed:\n{out}");
    find().ok_or_else(|| format!("tools.sh built no tiup:\n{out}"))
}

/// A tiup command with its own TIUP_HOME, so nothing touches the user's ~/.tiup.
pub fn tiup_cmd(tiup: &Path, home: &Path) -> Command {
    let mut c = Command::new(tiup);
    c.env("TIUP_HOME", home)
        .env("TIUP_CHECK_FOR_UPDATES", "false")
        .env("TIUP_TELEMETRY_STATUS", "disable");
    c
}

/// A child process in its own process group, killed with the whole group when dropped, so a
/// failing test leaves no proxy (or tiup and its proxy) behind.
pub struct Daemon {
    child: Child,
    done: Option<ExitStatus>,
}

impl Daemon {
    pub fn spawn(cmd: &mut Command) -> Daemon {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Daemon { child, done: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// The exit status once the process has exited, or None when `timeout` passes first.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        for _ in 0..100_000 {
            if self.done.is_none() {
                self.done = self.child.try_wait().expect("try_wait");
            }
            if self.done.is_some() || start.elapsed() > timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.done
    }

    pub fn running(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once 127.0.0.1:`port` accepts TCP (playground's and cluster's readiness check).
pub fn wait_listening(port: u16, timeout: Duration, proc: &mut Daemon) -> bool {
    let start = Instant::now();
    for _ in 0..10_000 {
        let addr = ([127, 0, 0, 1], port).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if start.elapsed() > timeout || !proc.running() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The ports one proxy instance listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub sql: u16,
    pub status: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports::distinct(1)[0]
    }

    /// Ports for `n` instances started side by side, no port shared by two of them.
    pub fn distinct(n: usize) -> Vec<Ports> {
        crate::common::net::free_ports(2 * n)
            .chunks(2)
            .map(|p| Ports {
                sql: p[0],
                status: p[1],
            })
            .collect()
    }
}

/// The keys playground forces into `<dir>/config/proxy.toml`, laid out as its TOML encoder
/// writes them (nested tables, advertise-addr a bare host), after the user's own `extra` keys.
pub fn playground_config(ports: Ports, pd_port: u16, log_file: &Path, extra: &str) -> String {
    format!(
        "{extra}\n[api]\naddr = \"127.0.0.1:{status}\"\n\n[log]\n[log.log-file]\nfilename = {log:?}\n\n\
         [proxy]\naddr = \"127.0.0.1:{sql}\"\nadvertise-addr = \"127.0.0.1\"\npd-addrs = \"127.0.0.1:{pd_port}\"\n",
        status = ports.status,
        sql = ports.sql,
        log = log_file.display().to_string(),
    )
}

/// Starts `bin` the way playground does: cwd `dir`, `--config=<dir>/config/proxy.toml`, stdout
/// and stderr into `<dir>/tiproxy.log` opened read-write without truncating or appending.
pub fn start_like_playground(bin: &Path, dir: &Path, config: &str) -> Daemon {
    let conf = dir.join("config").join("proxy.toml");
    std::fs::create_dir_all(conf.parent().unwrap()).expect("mkdir config");
    std::fs::write(&conf, config).expect("write proxy.toml");
    let log = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("tiproxy.log"))
        .expect("open tiproxy.log");
    Daemon::spawn(
        Command::new(bin)
            .arg(format!("--config={}", conf.display()))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log),
    )
}

/// Lays out a cluster deploy dir (`bin/tiproxy`, `conf/tiproxy.toml`, `log/`) and starts it the
/// way `scripts/run_tiproxy.sh` does: `cd <deploy>; exec bin/tiproxy --config conf/tiproxy.toml`.
pub fn start_like_cluster(bin: &Path, deploy: &Path, config: &str) -> Daemon {
    for sub in ["bin", "conf", "log"] {
        std::fs::create_dir_all(deploy.join(sub)).expect("mkdir deploy dir");
    }
    std::fs::copy(bin, deploy.join("bin/tiproxy")).expect("copy tiproxy into bin/");
    std::fs::write(deploy.join("conf/tiproxy.toml"), config).expect("write tiproxy.toml");
    let script = deploy.join("scripts/run_tiproxy.sh");
    std::fs::create_dir_all(script.parent().unwrap()).expect("mkdir scripts");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nset -e\ncd \"{}\" || exit 1\nexec bin/tiproxy --config conf/tiproxy.toml\n",
            deploy.display()
        ),
    )
    .expect("write run_tiproxy.sh");
    Daemon::spawn(
        Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// The log file's text, for failure messages.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}
