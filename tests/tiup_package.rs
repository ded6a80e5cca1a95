//! The release tarball end to end: its layout, the glibc it needs, stripped binaries, and a real tiup publishing it
//! to a local mirror (release and nightly), installing both and running them against MariaDB.

mod common;

use common::mariadb::MariaDb;
use common::tiup::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn unpack(tarball: &Path, into: &Path) {
    let (ok, out) = run(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(into),
        Duration::from_secs(60),
    );
    assert!(ok, "untar {}: {out}", tarball.display());
}

/// The highest `GLIBC_x.y[.z]` version any dynamic symbol of `bin` asks for.
fn max_glibc(bin: &Path) -> Vec<u32> {
    let (ok, out) = run(
        Command::new("objdump").arg("-T").arg(bin),
        Duration::from_secs(60),
    );
    assert!(ok, "objdump -T {}: {out}", bin.display());
    out.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .map(|v| v.split('.').map(|n| n.parse().unwrap_or(0)).collect())
        .max()
        .unwrap_or_default()
}

/// The section headers of `bin` (`objdump -h`).
fn sections(bin: &Path) -> String {
    let (ok, out) = run(
        Command::new("objdump").arg("-h").arg(bin),
        Duration::from_secs(60),
    );
    assert!(ok, "objdump -h {}: {out}", bin.display());
    out
}

#[test]
fn tarball_has_the_binaries_at_its_root_and_needs_glibc_2_17_at_most() {
    let tarball = package();
    let (ok, listing) = run(
        Command::new("tar").arg("-tzf").arg(tarball),
        Duration::from_secs(60),
    );
    assert!(ok, "tar -tzf: {listing}");
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(names, ["tiproxy", "tiproxyctl"], "archive root");

    let dir = tempfile::tempdir().unwrap();
    unpack(tarball, dir.path());
    for bin in ["tiproxy", "tiproxyctl"] {
        let path = dir.path().join(bin);
        let max = max_glibc(&path);
        eprintln!("{bin}: highest GLIBC symbol version {max:?}");
        assert!(!max.is_empty(), "{bin} links no glibc symbols at all?");
        // Stripped: no debug line tables (they made the package five times larger).
        let sections = sections(&path);
        // (.debug_gdb_scripts, a loaded section naming Rust's gdb helpers, stays.)
        for table in [".debug_info", ".debug_line"] {
            assert!(
                !sections.contains(table),
                "{bin} keeps {table}:\n{sections}"
            );
        }
        assert!(
            max <= vec![2, 17],
            "{bin} needs GLIBC {max:?}, more than 2.17"
        );
        let (ok, out) = run(Command::new(&path).arg("-v"), Duration::from_secs(30));
        assert!(ok && out.contains(TEST_VERSION), "{bin} -v: {out}");
    }
}

#[test]
fn tiup_publishes_installs_and_runs_release_and_nightly() {
    let tiup = match common::tiup::tiup() {
        Ok(t) => t,
        Err(why) => {
            common::tools::missing("tiup", &why);
            return;
        }
    };
    let tarball = package();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("tiup-home");
    let mirror = tmp.path().join("mirror");
    let path = format!(
        "{}:{}",
        tiup.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, out) = run(
        Command::new("packaging/publish.sh")
            .current_dir(repo_root())
            .env("TIUP_HOME", &home)
            .env("PATH", &path)
            .args(["--release", "--nightly", "--version", TEST_VERSION])
            .arg("--mirror")
            .arg(&mirror)
            .arg("--tarball")
            .arg(tarball),
        Duration::from_secs(300),
    );
    assert!(ok, "publish.sh:\n{out}");

    let nightly = format!("{TEST_VERSION}-nightly");
    let release = format!("tiproxy:{TEST_VERSION}");
    let (ok, out) = run(
        tiup_cmd(&tiup, &home).args(["install", "tiproxy:nightly", &release]),
        Duration::from_secs(300),
    );
    assert!(ok, "tiup install:\n{out}");
    let (ok, out) = run(
        tiup_cmd(&tiup, &home).args(["list", "tiproxy", "--installed"]),
        Duration::from_secs(60),
    );
    assert!(
        ok && out.contains(&nightly) && out.contains(TEST_VERSION),
        "both versions installed:\n{out}"
    );
    let (ok, out) = run(
        tiup_cmd(&tiup, &home).args(["tiproxy:nightly", "--version"]),
        Duration::from_secs(60),
    );
    assert!(
        ok && out.contains(&format!("version {TEST_VERSION}")),
        "tiup tiproxy:nightly --version:\n{out}"
    );

    let db = MariaDb::start();
    let ports = Ports::free();
    let conf = tmp.path().join("proxy.toml");
    std::fs::write(
        &conf,
        format!(
            "[proxy]\naddr = \"127.0.0.1:{}\"\nbackend-addrs = [\"{}\"]\n\n[api]\naddr = \"127.0.0.1:{}\"\n",
            ports.sql,
            db.addr(),
            ports.status
        ),
    )
    .unwrap();
    let mut proxy = Daemon::spawn(
        tiup_cmd(&tiup, &home)
            .arg(&release)
            .arg("--")
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(
        wait_listening(ports.sql, Duration::from_secs(60), &mut proxy),
        "tiup {release} -- --config {} did not listen on {}",
        conf.display(),
        ports.sql
    );
    let out = common::cli::mariadb(ports.sql, "app", "secret", &[], "SELECT VERSION()");
    assert!(out.ok(), "query through the tiup-run proxy: {out:?}");
    assert!(out.stdout.contains("MariaDB"), "{out:?}");
    // tiup passes SIGTERM on to the component and exits when it does.
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "tiup and tiproxy must exit after SIGTERM");
}
