//! The compressed protocol through the proxy as real drivers read it. mysql-connector-python
//! (its pure-Python reader takes a packet from at most two frames) gets a 300,000-character
//! value whole and the session goes on; many rows are left out, as that reader breaks on them
//! straight from MariaDB too, where a frame cuts a packet header. go-sql-driver/mysql (which
//! checks packet numbering) reads 100,000 rows and a 17 MB value without one `unexpected
//! sequence nr` warning. Each also runs straight against MariaDB, so a failure is the proxy's.

mod common;

use common::cli::{run, CmdOut};
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIG_VALUE: usize = 300_000;
const ROWS: usize = 100_000;

/// The pure-Python reader (the wheel has no C extension here), which is what hung or cut values.
fn python_client(port: u16) -> String {
    format!(
        "import mysql.connector\n\
         c = mysql.connector.connect(host='127.0.0.1', port={port}, user='{APP_USER}', \
         password='{APP_PASS}', database='test', compress=True, use_pure=True, \
         connection_timeout=20)\n\
         cur = c.cursor()\n\
         cur.execute(\"SELECT REPEAT('a', {BIG_VALUE})\")\n\
         print('len', len(cur.fetchone()[0]))\n\
         cur.execute('SELECT 7')\n\
         print('then', cur.fetchone()[0])\n\
         c.close()\n"
    )
}

/// Runs the client script; None (after tools::missing) without mysql-connector-python.
fn run_python(dir: &Path, script: &str) -> Option<CmdOut> {
    common::tools::require("python3", &["python3"])?;
    let probe = run(
        Command::new("python3").args(["-c", "import mysql.connector"]),
        Duration::from_secs(30),
    );
    if !probe.ok() {
        common::tools::missing("Python module mysql.connector", &probe.stderr);
        return None;
    }
    let path = dir.join("client.py");
    std::fs::write(&path, script).unwrap();
    Some(run(
        Command::new("python3").arg(&path),
        Duration::from_secs(120),
    ))
}

#[test]
fn mysql_connector_python_reads_a_large_value_compressed() {
    let (db, proxy) = common::db_and_proxy();
    let dir = tempfile::tempdir().unwrap();
    for (label, port) in [("MariaDB", db.port()), ("proxy", proxy.port())] {
        let Some(out) = run_python(dir.path(), &python_client(port)) else {
            return;
        };
        eprintln!("via {label}: {}", out.stdout.trim().replace('\n', ", "));
        assert!(out.ok() && !out.timed_out, "via {label}: {out:?}");
        assert!(
            out.stdout.contains(&format!("len {BIG_VALUE}")),
            "via {label}: value cut short: {out:?}"
        );
        assert!(out.stdout.contains("then 7"), "via {label}: {out:?}");
    }
}

const GO_CLIENT: &str = r#"package main

import (
	"database/sql"
	"fmt"
	"os"
	"strings"

	_ "github.com/go-sql-driver/mysql"
)

func main() {
	db, err := sql.Open("mysql", os.Args[1])
	if err != nil {
		panic(err)
	}
	defer db.Close()
	rows, err := db.Query(fmt.Sprintf("SELECT seq, REPEAT('x', 20) FROM seq_1_to_%s", os.Args[2]))
	if err != nil {
		fmt.Println("query error:", err)
		os.Exit(1)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		fmt.Println("rows error:", err)
		os.Exit(1)
	}
	var big string
	if err := db.QueryRow("SELECT REPEAT('a', 300000)").Scan(&big); err != nil {
		fmt.Println("value error:", err)
		os.Exit(1)
	}
	// Over 16 MiB: two physical packets, the first larger than a frame can hold.
	var huge string
	if err := db.QueryRow("SELECT REPEAT('b', 17000000)").Scan(&huge); err != nil || strings.Count(huge, "b") != len(huge) {
		fmt.Println("huge value error:", err)
		os.Exit(1)
	}
	var one int
	if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || strings.Count(big, "a") != len(big) {
		fmt.Println("follow-up query error:", err)
		os.Exit(1)
	}
	fmt.Println("rows", n, "len", len(big), "huge", len(huge))
}
"#;

fn sequence_warnings(out: &CmdOut) -> usize {
    (out.stdout.clone() + &out.stderr)
        .matches("unexpected sequence nr")
        .count()
}

#[test]
fn go_sql_driver_reads_many_rows_compressed_without_sequence_warnings() {
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let dir = tempfile::tempdir().unwrap();
    let Some(client) = common::go::build(dir.path(), GO_CLIENT) else {
        return;
    };
    for (label, port) in [("MariaDB", db.port()), ("proxy", proxy.port())] {
        let dsn = format!("{APP_USER}:{APP_PASS}@tcp(127.0.0.1:{port})/test?compress=true");
        let out = run(
            Command::new(&client).arg(&dsn).arg(ROWS.to_string()),
            Duration::from_secs(120),
        );
        let warnings = sequence_warnings(&out);
        eprintln!(
            "via {label}: {} ({warnings} sequence warnings)",
            out.stdout.trim()
        );
        assert!(out.ok() && !out.timed_out, "via {label}: {out:?}");
        assert!(
            out.stdout.contains(&format!("rows {ROWS} len {BIG_VALUE}")),
            "via {label}: {out:?}"
        );
        assert_eq!(warnings, 0, "via {label}: {}", out.stderr);
    }
}
