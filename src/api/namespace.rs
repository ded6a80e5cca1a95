//! TiProxy's namespace API (`/api/admin/namespace`: list, get, put, del, commit). Unlike
//! TiProxy, a put or del takes effect at once and is written into the config file's
//! `[[namespace]]` tables (atomically: a temporary file renamed over it), so namespaces survive
//! a restart; `commit` is accepted for TiProxy's scripts and checks the names it is given.

use crate::config::namespace::NamespaceConfig;
use crate::reload::Running;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a namespace request did, or why not, with the HTTP status it maps to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Done,
    NotFound(String),
    Invalid(String),
    /// The file could not be written; nothing was applied.
    Storage(String),
}

/// The config file namespaces are written into, when the proxy was started with one; and one
/// change at a time, so two puts cannot interleave their read-modify-write.
#[derive(Default)]
pub struct NamespaceStore {
    file: std::sync::OnceLock<PathBuf>,
    serial: Mutex<()>,
}

impl NamespaceStore {
    pub fn set_file(&self, path: PathBuf) {
        let _ = self.file.set(path);
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.get().map(PathBuf::as_path)
    }

    pub fn list(running: &Running) -> Vec<NamespaceConfig> {
        running.get().namespace.clone()
    }

    pub fn get(running: &Running, name: &str) -> Option<NamespaceConfig> {
        running
            .get()
            .namespace
            .iter()
            .find(|n| n.namespace == name)
            .cloned()
    }

    /// Adds or replaces a namespace from TiProxy's JSON body; `path_name` names it when the
    /// body does not.
    pub fn put(&self, running: &Running, path_name: &str, body: &[u8]) -> Outcome {
        let mut ns: NamespaceConfig = match serde_json::from_slice(body) {
            Ok(n) => n,
            Err(e) => return Outcome::Invalid(format!("bad namespace JSON: {e}")),
        };
        if ns.namespace.trim().is_empty() {
            ns.namespace = path_name.to_string();
        }
        if !path_name.is_empty() && ns.namespace != path_name {
            return Outcome::Invalid(format!(
                "the path names namespace {path_name:?} and the body {:?}",
                ns.namespace
            ));
        }
        self.change(running, |list| {
            match list.iter_mut().find(|n| n.namespace == ns.namespace) {
                Some(slot) => *slot = ns,
                None => list.push(ns),
            }
            Ok(())
        })
    }

    pub fn delete(&self, running: &Running, name: &str) -> Outcome {
        self.change(running, |list| {
            let before = list.len();
            list.retain(|n| n.namespace != name);
            if list.len() == before {
                return Err(Outcome::NotFound(format!("no namespace {name:?}")));
            }
            Ok(())
        })
    }

    /// Validates the changed list, writes it to the file, then applies it; a failure at any
    /// step leaves the file and the running config as they were.
    fn change(
        &self,
        running: &Running,
        edit: impl FnOnce(&mut Vec<NamespaceConfig>) -> Result<(), Outcome>,
    ) -> Outcome {
        let _one = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (*running.get()).clone();
        if let Err(o) = edit(&mut next.namespace) {
            return o;
        }
        if let Err(e) = next.validate() {
            return Outcome::Invalid(e.to_string());
        }
        if let Some(path) = self.file() {
            if let Err(e) = write_namespaces(path, &next.namespace) {
                return Outcome::Storage(format!(
                    "cannot write the namespaces into {}: {e}",
                    path.display()
                ));
            }
        }
        match crate::reload::apply(running, next) {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Invalid(e.to_string()),
        }
    }
}

/// The names `commit` was given: TiProxy's server reads `namespace=a&namespace=b`, its
/// tiproxyctl sends `namespaces=a,b`; both are read.
pub fn commit_names(query: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for kv in query.unwrap_or("").split('&') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if k == "namespace" || k == "namespaces" {
            out.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            );
        }
    }
    out
}

/// Replaces the `[[namespace]]` tables of the config file, keeping everything else as written
/// (comments included), through a temporary file renamed over the real one.
pub fn write_namespaces(path: &Path, list: &[NamespaceConfig]) -> std::io::Result<()> {
    use std::io::Write;
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    // A symlinked config (a deployment's shared file) is written where it really lives.
    let path = std::fs::canonicalize(path)?;
    let text = std::fs::read_to_string(&path)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| bad(format!("{e}")))?;
    doc.remove("namespace");
    let mut out = doc.to_string();
    if !list.is_empty() {
        // Appended after everything else: an array of tables at the end of a document is
        // always valid TOML, whatever tables come before it.
        #[derive(serde::Serialize)]
        struct Tables<'a> {
            namespace: &'a [NamespaceConfig],
        }
        let tables =
            toml::to_string(&Tables { namespace: list }).map_err(|e| bad(e.to_string()))?;
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&tables);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let tmp = dir.join(format!(".{name}.namespace-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(out.as_bytes())?;
        if let Ok(meta) = std::fs::metadata(&path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // The rename itself is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_reads_both_query_shapes() {
        assert_eq!(
            commit_names(Some("namespace=a&namespace=b")),
            vec!["a", "b"]
        );
        assert_eq!(commit_names(Some("namespaces=a,b,")), vec!["a", "b"]);
        assert!(commit_names(None).is_empty());
    }

    #[test]
    fn the_file_keeps_its_other_lines() {
        let dir = std::env::temp_dir().join(format!("tiproxy-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(
            &path,
            "# kept\n[proxy]\naddr = \"0.0.0.0:6000\"\n[api]\nuser = \"a\"\n",
        )
        .unwrap();
        let ns: NamespaceConfig = serde_json::from_str(
            r#"{"namespace":"a","frontend":{"user":"u"},"backend":{"instances":["h:1"]}}"#,
        )
        .unwrap();
        write_namespaces(&path, std::slice::from_ref(&ns)).unwrap();
        // Written twice: the second write replaces the tables the first one added.
        write_namespaces(&path, std::slice::from_ref(&ns)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# kept\n"), "{text}");
        let loaded = crate::config::load_file(&path).unwrap().config;
        assert_eq!(loaded.namespace, vec![ns]);
        assert_eq!(loaded.proxy.addr, "0.0.0.0:6000");
        assert_eq!(loaded.api.user, "a");
        write_namespaces(&path, &[]).unwrap();
        assert!(crate::config::load_file(&path)
            .unwrap()
            .config
            .namespace
            .is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
