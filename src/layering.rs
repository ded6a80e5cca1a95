//! Enforces the import rules of docs/architecture.md: each top-level module may name only the
//! modules below it. Scans `src/` for `crate::` paths (and `super::` chains that climb to the
//! crate root), so a new edge fails here instead of surfacing later as a cycle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What each top-level module may import, as path prefixes under `crate::`. A module always
/// may import itself. Keep in step with the table in docs/architecture.md.
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    const LEAVES: &[&str] = &["version", "events", "hardening"];
    Some(match module {
        "protocol" | "config" | "version" | "events" | "hardening" | "timer" => &[],
        "logging" => &["config"],
        "metrics" => &["protocol"],
        "balance" => &[
            "protocol", "config", "metrics", "logging", "version", "events",
        ],
        "health" => &[
            "protocol",
            "config",
            "metrics",
            "balance",
            "events",
            // The probe signs off like a session does; no other part of the data plane.
            "proxy::migrate::credential",
            "proxy::migrate::tidb",
        ],
        "discovery" => &[
            "config", "logging", "metrics", "balance", "version", "events",
        ],
        "proxy" => &[
            "protocol", "config", "logging", "metrics", "balance", "health", "version", "events",
        ],
        "reload" => &[
            "protocol", "config", "logging", "balance", "proxy", "events",
        ],
        "api" => &[
            "protocol",
            "config",
            "logging",
            "metrics",
            "balance",
            "health",
            "proxy",
            "reload",
            "discovery",
            "version",
            "events",
        ],
        "ctl" => &["config", "version", "proxy::tls"],
        "app" => &[
            "protocol",
            "config",
            "logging",
            "metrics",
            "balance",
            "health",
            "proxy",
            "reload",
            "discovery",
            "api",
            "version",
            "events",
            "hardening",
        ],
        _ => return LEAVES.contains(&module).then_some(&[]),
    })
}

/// Every `.rs` file under `dir`; also used by the other scans of `src/` (`timer`).
pub(crate) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/proxy/session/mod.rs` is `[proxy, session]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every `crate::a::b` path in `line`, including the members of `crate::{a, b::c}`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = &rest[..at];
        rest = &rest[at + "crate::".len()..];
        // `tiproxy_crate::x` or `some_crate::x` are not ours.
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for member in group[..end].split(',') {
                found.push(path_of(member.trim()));
            }
        } else {
            found.push(path_of(rest));
        }
    }
    found.retain(|p| !p.is_empty());
    found
}

fn path_of(text: &str) -> String {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':').to_owned()
}

/// `super::super::x` written in a file at `module`: the crate path it names when it climbs to
/// the crate root, else None.
fn super_path(module: &[String], line: &str) -> Option<String> {
    let at = line.find("super::")?;
    let mut rest = &line[at..];
    let mut ups = 0;
    while let Some(r) = rest.strip_prefix("super::") {
        ups += 1;
        rest = r;
    }
    (ups >= module.len()).then(|| path_of(rest))
}

fn permits(top: &str, path: &str) -> bool {
    let target = path.split("::").next().unwrap_or_default();
    // Timers come from `timer` everywhere: a worker has no timer driver of its own.
    if target == "timer" {
        return true;
    }
    if target == top || allowed(target).is_none() {
        // Itself, or not a module (a macro or item at the crate root).
        return true;
    }
    allowed(top).is_some_and(|rules| {
        rules
            .iter()
            .any(|r| path == *r || path.starts_with(&format!("{r}::")) || target == *r)
    })
}

/// Violations as `file:line: module imports path`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let module = module_path(src, &file);
        let Some(top) = module.first().cloned() else {
            continue;
        };
        // Binaries and the crate root sit above every layer.
        if top == "bin" || top == "lib" || top == "layering" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let mut paths = crate_paths(code);
            paths.extend(super_path(&module, code));
            for p in paths {
                if !permits(&top, &p) {
                    bad.push(format!("{}:{}: {top} imports {p}", file.display(), n + 1));
                }
            }
        }
    }
    bad
}

#[test]
fn modules_import_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports that break docs/architecture.md's rules:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_sees_what_it_must() {
    assert_eq!(
        crate_paths("use crate::{proxy::tls, config};"),
        ["proxy::tls", "config"]
    );
    assert_eq!(
        crate_paths("let m = crate::metrics::Metrics::new();"),
        ["metrics::Metrics::new"]
    );
    assert!(crate_paths("use tokio_util::sync;").is_empty());
    let module = vec!["balance".to_owned(), "factors".to_owned()];
    assert_eq!(
        super_path(&module, "use super::super::proxy::x;").as_deref(),
        Some("proxy::x")
    );
    assert_eq!(super_path(&module, "use super::parse;"), None);
    assert!(!permits("balance", "discovery::PdStatus"));
    assert!(!permits("protocol", "proxy::error"));
    assert!(permits("health", "proxy::migrate::tidb::is_tidb"));
    assert!(!permits("health", "proxy::session"));
    let seen: BTreeSet<&str> = ["protocol", "proxy", "balance", "discovery"]
        .into_iter()
        .filter(|m| allowed(m).is_some())
        .collect();
    assert_eq!(seen.len(), 4);
}
