//! Small Go programs built against go-sql-driver/mysql in a temp dir, for tests that check what
//! a Go user sees. The driver module comes through the Go module proxy.

use super::cli::run;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The go-sql-driver/mysql version the tests build against.
pub const DRIVER: &str = "github.com/go-sql-driver/mysql@v1.10.1";

/// Builds `main_go` in `dir` and returns the executable; None (after tools::missing) without Go.
pub fn build(dir: &Path, main_go: &str) -> Option<PathBuf> {
    super::tools::require("go", &["go"])?;
    std::fs::write(dir.join("main.go"), main_go).unwrap();
    std::fs::write(dir.join("go.mod"), "module tiproxytest\n\ngo 1.22\n").unwrap();
    let go = |args: &[&str]| {
        let out = run(
            Command::new("go").args(args).current_dir(dir),
            Duration::from_secs(600),
        );
        assert!(out.ok(), "go {args:?}: {out:?}");
    };
    go(&["get", DRIVER]);
    go(&["build", "-o", "client", "."]);
    Some(dir.join("client"))
}
