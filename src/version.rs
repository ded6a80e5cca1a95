//! Build identity: the version and git commit baked in at compile time.

/// The release version: `TIPROXY_VERSION` at build time (set by the Makefile from the
/// environment or `git describe`), else the crate version.
pub const VERSION: &str = match option_env!("TIPROXY_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The git commit the binary was built from, or "unknown" outside a checkout.
pub const GIT_HASH: &str = match option_env!("TIPROXY_GIT_HASH") {
    Some(v) => v,
    None => "unknown",
};

/// The line `-v` prints: `<argv0> version <VERSION>, commit <HASH>`.
pub fn version_line(argv0: &str) -> String {
    format!("{argv0} version {VERSION}, commit {GIT_HASH}")
}
