//! The one rule for tests that need an outside tool: under `CI=true` a missing tool fails the
//! test and names it; elsewhere the test may skip, but says which tool and how to get it.

use std::path::PathBuf;

/// True when running under CI (`CI=true` or `CI=1`, as CI systems set it).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

/// The first of `names` found as a file on PATH (or in /usr/sbin, where Debian puts daemons).
pub fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .collect();
    names
        .iter()
        .find_map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()))
}

/// `tool` (any of `names`) on PATH, or the verdict on its absence: panics under CI naming it,
/// otherwise prints why the test is skipped and returns None for the caller to return.
pub fn require(tool: &str, names: &[&str]) -> Option<PathBuf> {
    let found = find(names);
    if found.is_none() {
        missing(tool, &format!("none of {names:?} is on PATH"));
    }
    found
}

/// Reports a missing `tool` (with `detail`): fails the test under CI, else prints a SKIPPED
/// line on stderr. The caller returns after it (outside CI).
pub fn missing(tool: &str, detail: &str) {
    let msg = format!(
        "{tool} is required by this test and is missing ({detail}); scripts/install-deps.sh installs it"
    );
    if in_ci() {
        panic!("CI=true: {msg}");
    }
    // Straight to stderr, not eprintln!: the test harness hides a passing test's captured output,
    // and a skip that nobody sees is what this module exists to prevent.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED (not under CI): {msg}");
}
