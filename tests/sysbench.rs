//! sysbench oltp_point_select through the proxy: prepared statements under concurrency.

mod common;

use common::cli::{run, CmdOut};
use std::process::Command;
use std::time::Duration;

fn sysbench(port: u16, phase: &[&str]) -> CmdOut {
    let mut cmd = Command::new("sysbench");
    cmd.arg("oltp_point_select")
        .arg("--db-driver=mysql")
        .arg("--mysql-host=127.0.0.1")
        .arg(format!("--mysql-port={port}"))
        .args([
            "--mysql-user=app",
            "--mysql-password=secret",
            "--mysql-db=test",
        ])
        .args(["--tables=1", "--table-size=1000", "--db-ps-mode=auto"])
        .args(phase);
    run(&mut cmd, Duration::from_secs(120))
}

/// The number after `label` on the first line that contains it, e.g. "queries:  1234 (...)".
fn number_after(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(label))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn oltp_point_select_runs_without_errors() {
    if common::tools::require("sysbench", &["sysbench"]).is_none() {
        return;
    }
    let (_db, proxy) = common::db_and_proxy();
    let prep = sysbench(proxy.port(), &["prepare"]);
    assert!(prep.ok(), "sysbench prepare: {prep:?}");
    let out = sysbench(proxy.port(), &["--threads=4", "--time=5", "run"]);
    assert!(out.ok() && !out.timed_out, "sysbench run: {out:?}");
    let queries = number_after(&out.stdout, "queries:").unwrap_or(0);
    assert!(queries > 0, "no queries reported:\n{}", out.stdout);
    assert_eq!(
        number_after(&out.stdout, "ignored errors:"),
        Some(0),
        "{}",
        out.stdout
    );
}
