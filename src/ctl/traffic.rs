//! `tiproxyctl traffic capture|replay|cancel|show` with TiProxy's flag names, turned into the
//! form requests of `/api/traffic/...`.

use super::usage::UsageError;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

/// A flag: its TiProxy name, the form field it fills, and its default (None: a boolean).
struct Flag {
    name: &'static str,
    field: &'static str,
    default: &'static str,
    boolean: bool,
}

const fn text(name: &'static str, field: &'static str, default: &'static str) -> Flag {
    Flag {
        name,
        field,
        default,
        boolean: false,
    }
}

const fn boolean(name: &'static str, field: &'static str, default: &'static str) -> Flag {
    Flag {
        name,
        field,
        default,
        boolean: true,
    }
}

const CAPTURE: &[Flag] = &[
    text("output", "output", ""),
    text("duration", "duration", ""),
    text("encryption-method", "encrypt-method", ""),
    boolean("compress", "compress", "true"),
];

const REPLAY: &[Flag] = &[
    text("input", "input", ""),
    text("speed", "speed", "1"),
    text("username", "username", ""),
    text("password", "password", ""),
    boolean("read-only", "readonly", "false"),
    text("format", "format", ""),
    text("command-start-time", "cmdstarttime", ""),
    boolean("ignore-errs", "ignore-errs", "false"),
    text("bufsize", "bufsize", "100000"),
    text("ps-close", "ps-close", "directed"),
];

/// Reads `--name value`, `--name=value` and bare boolean `--name` flags.
fn parse(
    verb: &str,
    flags: &[Flag],
    args: &[String],
) -> Result<BTreeMap<String, String>, UsageError> {
    let mut out: BTreeMap<String, String> = flags
        .iter()
        .map(|f| (f.name.to_owned(), f.default.to_owned()))
        .collect();
    let mut given = std::collections::BTreeSet::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(stripped) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(UsageError::TrafficArgument {
                verb: verb.into(),
                arg: a.clone(),
            });
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (stripped, None),
        };
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            let known: Vec<&str> = flags.iter().map(|f| f.name).collect();
            return Err(UsageError::TrafficFlag {
                verb: verb.into(),
                name: name.into(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        let value = match (inline, flag.boolean) {
            (Some(v), _) => v,
            (None, true) => "true".into(),
            (None, false) => it.next().cloned().ok_or_else(|| UsageError::TrafficValue {
                verb: verb.into(),
                name: name.into(),
            })?,
        };
        if flag.boolean && !matches!(value.as_str(), "true" | "false" | "1" | "0") {
            return Err(UsageError::TrafficBoolean {
                verb: verb.into(),
                name: name.into(),
            });
        }
        given.insert(name.to_owned());
        out.insert(name.to_owned(), value);
    }
    if verb == "replay" && !given.contains("password") {
        out.remove("password");
    }
    Ok(out)
}

fn form(flags: &[Flag], values: &BTreeMap<String, String>) -> Vec<u8> {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for flag in flags {
        if let Some(v) = values.get(flag.name) {
            f.append_pair(flag.field, v);
        }
    }
    f.finish().into_bytes()
}

/// Asks for the replay user's password on the terminal without echoing it, as TiProxy's
/// tiproxyctl does; from a pipe, reads one line.
fn ask_password(user: &str) -> Result<String, UsageError> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("Input password for user {user}: ");
        let _ = std::io::stderr().flush();
    }
    let echo = tty.then(EchoOff::new).flatten();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    drop(echo);
    if tty {
        eprintln!();
    }
    read.map_err(UsageError::Password)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Turns terminal echo off until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios struct we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

/// The method, path and form body of a traffic subcommand.
pub fn request(args: &[String]) -> Result<(&'static str, String, Option<Vec<u8>>), UsageError> {
    let verb = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or_default();
    match verb {
        "show" => {
            parse(verb, &[], rest)?;
            Ok(("GET", "/api/traffic/show".into(), None))
        }
        "cancel" => {
            parse(verb, &[], rest)?;
            Ok(("POST", "/api/traffic/cancel".into(), Some(Vec::new())))
        }
        "capture" => {
            let v = parse(verb, CAPTURE, rest)?;
            Ok((
                "POST",
                "/api/traffic/capture".into(),
                Some(form(CAPTURE, &v)),
            ))
        }
        "replay" => {
            let mut v = parse(verb, REPLAY, rest)?;
            let user = v.get("username").cloned().unwrap_or_default();
            if user.is_empty() {
                return Err(UsageError::TrafficUser);
            }
            if !v.contains_key("password") {
                v.insert("password".into(), ask_password(&user)?);
            }
            let body = form(REPLAY, &v);
            if let Some(p) = v.get_mut("password") {
                zeroize::Zeroize::zeroize(p);
            }
            Ok(("POST", "/api/traffic/replay".into(), Some(body)))
        }
        _ => Err(UsageError::Subcommand {
            group: "traffic",
            verbs: "capture, replay, cancel, show",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn fields(body: &[u8]) -> BTreeMap<String, String> {
        form_urlencoded::parse(body).into_owned().collect()
    }

    #[test]
    fn capture_and_replay_flags_become_tiproxy_form_fields() {
        let (m, p, b) = request(&args(&[
            "capture",
            "--output",
            "/tmp/t",
            "--duration=1m",
            "--compress=false",
            "--encryption-method",
            "aes256-ctr",
        ]))
        .unwrap();
        assert_eq!((m, p.as_str()), ("POST", "/api/traffic/capture"));
        let f = fields(&b.unwrap());
        assert_eq!(f["output"], "/tmp/t");
        assert_eq!(f["duration"], "1m");
        assert_eq!(f["compress"], "false");
        assert_eq!(f["encrypt-method"], "aes256-ctr");

        let (_, p, b) = request(&args(&[
            "replay",
            "--input",
            "/tmp/t",
            "--username",
            "u",
            "--password",
            "p w&x",
            "--read-only",
            "--speed",
            "2",
        ]))
        .unwrap();
        assert_eq!(p, "/api/traffic/replay");
        let f = fields(&b.unwrap());
        assert_eq!(f["password"], "p w&x");
        assert_eq!(f["readonly"], "true");
        assert_eq!(f["speed"], "2");
        assert_eq!(f["ps-close"], "directed");
    }

    #[test]
    fn mistakes_are_refused() {
        assert!(request(&args(&["capture", "--out", "x"])).is_err());
        assert!(request(&args(&["capture", "--output"])).is_err());
        assert!(request(&args(&["replay", "--input", "x"])).is_err());
        assert!(request(&args(&["replay", "--username", "u", "--read-only=maybe"])).is_err());
        assert!(request(&args(&["show", "extra"])).is_err());
        assert!(request(&args(&["bogus"])).is_err());
        assert_eq!(request(&args(&["show"])).unwrap().0, "GET");
    }
}
