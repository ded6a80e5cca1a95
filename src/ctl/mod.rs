//! tiproxyctl: flags, subcommands and output (tables for people, `--json` for scripts).
//! Exit codes: 0 ok, 1 the proxy answered with an error, 2 usage, 3 the proxy is unreachable.

pub mod client;
mod table;
mod traffic;
mod usage;

use crate::config::TlsConfig;
use clap::{Parser, Subcommand};
use client::{Answer, Target};
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use usage::UsageError;

pub const EXIT_OK: u8 = 0;
pub const EXIT_PROXY_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "tiproxyctl",
    about = "Inspect and configure a running tiproxy through its status port",
    disable_version_flag = true
)]
pub struct Cli {
    /// The proxy's status-port host.
    #[arg(long, global = true, default_value = "localhost")]
    pub host: String,
    /// The proxy's status port ([api] addr).
    #[arg(long, global = true, default_value_t = 3080)]
    pub port: u16,
    /// HTTPS without verifying the proxy's certificate.
    #[arg(short = 'k', long, global = true)]
    pub insecure: bool,
    /// CA to verify the proxy's certificate with (selects HTTPS).
    #[arg(long, global = true, default_value = "")]
    pub ca: String,
    /// Client certificate (selects HTTPS).
    #[arg(long, global = true, default_value = "")]
    pub cert: String,
    /// Client certificate key.
    #[arg(long, global = true, default_value = "")]
    pub key: String,
    /// [api] user, when the status port requires basic auth.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// [api] password. Visible to other users in `ps`: prefer --password-file or the
    /// TIPROXYCTL_PASSWORD environment variable.
    #[arg(long, global = true)]
    pub password: Option<String>,
    /// Read the [api] password from this file (its first line).
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// Print the proxy's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print the version and commit, then exit.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read or change the running configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Whether the proxy is serving (exit 1 while it is not).
    Health,
    /// Backends with health, sessions, QPS, error rate and p99 latency.
    Backends,
    /// Client connections.
    Connections,
    /// Recent events: backends up and down, config changes, migrations.
    Events,
    /// Move sessions to another backend at their next transaction boundary.
    Migrate {
        /// Move the sessions on this backend (host:port).
        #[arg(long)]
        from: Option<String>,
        /// Move this one session (connection id from `connections`).
        #[arg(long)]
        session: Option<u64>,
        /// Target backend; default: the least loaded healthy one.
        #[arg(long)]
        to: Option<String>,
        /// Move at most this many sessions.
        #[arg(long)]
        count: Option<usize>,
    },
    /// TiProxy's namespaces: list, get NAME, put [--ns FILE], del NAME, commit [NAME...].
    Namespace {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// TiProxy's traffic capture and replay: capture, replay, cancel, show.
    Traffic {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The method, path and body of a TiProxy namespace or traffic subcommand.
fn tiproxy_request(
    command: &Command,
) -> Result<(&'static str, String, Option<Vec<u8>>), UsageError> {
    let (group, args) = match command {
        Command::Namespace { args } => ("namespace", args),
        Command::Traffic { args } => ("traffic", args),
        _ => return Err(UsageError::NotTiproxyGroup),
    };
    let verb = args.first().map(String::as_str).unwrap_or("");
    let name = args.get(1).cloned().unwrap_or_default();
    let post = Some(Vec::new());
    Ok(match (group, verb) {
        ("namespace", "list") => ("GET", "/api/admin/namespace".into(), None),
        ("namespace", "get") => ("GET", format!("/api/admin/namespace/{name}"), None),
        ("namespace", "del") => ("DELETE", format!("/api/admin/namespace/{name}"), None),
        ("namespace", "commit") => (
            "POST",
            format!(
                "/api/admin/namespace/commit?namespaces={}",
                args[1..].join(",")
            ),
            post,
        ),
        ("namespace", "put") => {
            // TiProxy's `--ns FILE` (our `-i` too); standard input without one.
            let file = args
                .iter()
                .skip_while(|a| !matches!(a.as_str(), "--ns" | "-i" | "--input"))
                .nth(1)
                .map(std::path::Path::new);
            let (name, json) = namespace_json(&read_input(file)?)?;
            ("PUT", format!("/api/admin/namespace/{name}"), Some(json))
        }
        ("traffic", _) => return traffic::request(args),
        _ => {
            return Err(UsageError::Subcommand {
                group,
                verbs: if group == "namespace" {
                    "list, get NAME, put --ns FILE, del NAME, commit [NAME...]"
                } else {
                    "capture, replay, cancel, show"
                },
            })
        }
    })
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the running configuration (TOML; JSON with --json).
    Get,
    /// Merge a partial TOML document into the running configuration.
    Set {
        /// The TOML file; standard input when absent or "-".
        #[arg(long, short = 'i')]
        input: Option<PathBuf>,
    },
}

/// The environment variable tiproxyctl reads the [api] password from.
pub const PASSWORD_ENV: &str = "TIPROXYCTL_PASSWORD";

/// The password from --password, --password-file or the environment, in that order.
fn password(
    given: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<crate::config::Secret>, UsageError> {
    if let Some(p) = given {
        return Ok(Some(p.into()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| UsageError::PasswordFile {
            path: path.to_owned(),
            source,
        })?;
        let secret = crate::config::Secret::from(text.lines().next().unwrap_or(""));
        zeroize::Zeroize::zeroize(&mut text.into_bytes());
        return Ok(Some(secret));
    }
    Ok(std::env::var(PASSWORD_ENV)
        .ok()
        .map(crate::config::Secret::from))
}

/// Runs one invocation; returns the process exit code.
pub async fn run(cli: Cli, argv0: &str) -> u8 {
    if cli.version {
        println!("{}", crate::version::version_line(argv0));
        return EXIT_OK;
    }
    let Some(command) = cli.command else {
        eprintln!("{argv0}: a subcommand is needed: config get|set, health, backends, connections, events, migrate, namespace, traffic (see --help)");
        return EXIT_USAGE;
    };
    let tls = TlsConfig {
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        skip_ca: cli.insecure,
        ..Default::default()
    };
    let password = match password(cli.password.as_deref(), cli.password_file.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{argv0}: {e}");
            return EXIT_USAGE;
        }
    };
    let creds = cli
        .user
        .as_deref()
        .map(|u| (u, password.as_ref().map_or("", |p| p.expose())));
    if creds.is_some() && !tls.enabled_for_client() {
        eprintln!("{argv0}: warning: sending the password over plain HTTP; use --ca (or -k) when the status port serves HTTPS");
    }
    let target = match Target::new(&cli.host, cli.port, &tls, creds) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{argv0}: TLS settings: {e}");
            return EXIT_USAGE;
        }
    };
    let migrate_path;
    let tiproxy_path;
    let (method, path, body) = match &command {
        Command::Namespace { .. } | Command::Traffic { .. } => match tiproxy_request(&command) {
            Ok((m, p, b)) => {
                tiproxy_path = p;
                (m, tiproxy_path.as_str(), b)
            }
            Err(e) => {
                eprintln!("{argv0}: {e}");
                return EXIT_USAGE;
            }
        },
        Command::Config(ConfigCommand::Get) if cli.json => {
            ("GET", "/api/admin/config?format=json", None)
        }
        Command::Config(ConfigCommand::Get) => ("GET", "/api/admin/config", None),
        Command::Config(ConfigCommand::Set { input }) => match read_input(input.as_deref()) {
            Ok(b) => ("PUT", "/api/admin/config", Some(b)),
            Err(e) => {
                eprintln!("{argv0}: {e}");
                return EXIT_USAGE;
            }
        },
        Command::Health => ("GET", "/api/debug/health", None),
        Command::Backends => ("GET", "/api/backends", None),
        Command::Connections => ("GET", "/api/connections", None),
        Command::Events => ("GET", "/api/events", None),
        Command::Migrate {
            from,
            session,
            to,
            count,
        } => {
            if from.is_none() && session.is_none() {
                eprintln!("{argv0}: migrate needs --from <backend> or --session <id>");
                return EXIT_USAGE;
            }
            let mut q = Vec::new();
            if let Some(f) = from {
                q.push(format!("from={f}"));
            }
            if let Some(s) = session {
                q.push(format!("session={s}"));
            }
            if let Some(t) = to {
                q.push(format!("to={t}"));
            }
            if let Some(c) = count {
                q.push(format!("count={c}"));
            }
            migrate_path = format!("/api/admin/migrate?{}", q.join("&"));
            ("POST", migrate_path.as_str(), Some(Vec::new()))
        }
    };
    let answer = match target.request(method, path, body).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{argv0}: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let ok = (200..300).contains(&answer.status);
    if cli.json || matches!(command, Command::Config(ConfigCommand::Get)) {
        if ok || matches!(command, Command::Health) {
            print!("{}", with_newline(&answer.body));
        } else {
            eprintln!("{argv0}: {}", failure(&answer, &target.url(path)));
        }
        return if ok { EXIT_OK } else { EXIT_PROXY_ERROR };
    }
    if !ok && !matches!(command, Command::Health) {
        eprintln!("{argv0}: {}", failure(&answer, &target.url(path)));
        return EXIT_PROXY_ERROR;
    }
    let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let text = match command {
        Command::Health => health_text(ok, &v),
        Command::Config(_) => table::reload_report(&v),
        Command::Backends => table::backends(&v),
        Command::Connections => table::connections(&v),
        Command::Events => table::events(&v),
        Command::Namespace { ref args } => namespace_text(args, &v, &answer.body),
        Command::Traffic { .. } => answer.body.clone(),
        Command::Migrate { .. } => format!(
            "{} session(s) asked to move; each moves at its next transaction boundary",
            v["requested"]
        ),
    };
    print!("{}", with_newline(&text));
    if ok {
        EXIT_OK
    } else {
        EXIT_PROXY_ERROR
    }
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

fn failure(a: &Answer, url: &str) -> String {
    let reason = serde_json::from_str::<Value>(&a.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| a.body.trim().to_owned());
    format!("{url} answered HTTP {}: {reason}", a.status)
}

fn health_text(ok: bool, v: &Value) -> String {
    if ok {
        format!(
            "healthy (config checksum {})",
            v.get("config_checksum").unwrap_or(&Value::Null)
        )
    } else {
        let why = v
            .get("unhealthy_reason")
            .and_then(|r| r.as_str())
            .unwrap_or("no reason given");
        format!("unhealthy: {why}")
    }
}

/// A namespace file (TiProxy's TOML) as the JSON body the API takes, with its name.
fn namespace_json(toml_text: &[u8]) -> Result<(String, Vec<u8>), UsageError> {
    let text = std::str::from_utf8(toml_text).map_err(|_| UsageError::NamespaceNotUtf8)?;
    let ns: crate::config::namespace::NamespaceConfig =
        toml::from_str(text).map_err(UsageError::NamespaceFile)?;
    if ns.namespace.trim().is_empty() {
        return Err(UsageError::NamespaceUnnamed);
    }
    let json = serde_json::to_vec(&ns).map_err(UsageError::NamespaceJson)?;
    Ok((ns.namespace, json))
}

/// What TiProxy's tiproxyctl prints: `list` a TOML table per namespace, keyed by name; `get`
/// the namespace as TOML; the other verbs the proxy's answer.
fn namespace_text(args: &[String], v: &Value, body: &str) -> String {
    let as_toml = |v: &Value| -> Option<String> {
        let ns: crate::config::namespace::NamespaceConfig =
            serde_json::from_value(v.clone()).ok()?;
        toml::to_string(&ns).ok()
    };
    match args.first().map(String::as_str) {
        Some("list") => {
            let mut map = toml::Table::new();
            for ns in v.as_array().into_iter().flatten() {
                let name = ns["namespace"].as_str().unwrap_or_default().to_string();
                if let Some(t) = as_toml(ns).and_then(|t| t.parse::<toml::Table>().ok()) {
                    map.insert(name, toml::Value::Table(t));
                }
            }
            toml::to_string(&map).unwrap_or_default()
        }
        Some("get") => as_toml(v).unwrap_or_else(|| body.to_string()),
        _ => body.to_string(),
    }
}

fn read_input(path: Option<&std::path::Path>) -> Result<Vec<u8>, UsageError> {
    match path {
        Some(p) if p.as_os_str() != "-" => std::fs::read(p).map_err(|source| UsageError::Input {
            path: p.to_owned(),
            source,
        }),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(UsageError::Stdin)?;
            Ok(buf)
        }
    }
}
