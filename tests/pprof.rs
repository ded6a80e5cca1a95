//! TiProxy's `/debug/pprof/` paths against the real binary: a CPU profile taken while queries
//! run is gzip'd profile.proto with Go's sample types, samples and our function names (decoded
//! here with field numbers of our own, not the proxy's structs); a second profile at the same
//! time is refused; the text views (threads, allocator, argv) and the 501s say what they are;
//! and nothing is served without the `[api]` credentials.

mod common;

use common::http::{basic, http, http_bytes};
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use flate2::read::GzDecoder;
use prost::Message;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The profile.proto fields this test reads.
#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

const AUTH: (&str, &str) = ("admin", "pprof-pw");

fn get(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    http_bytes(port, "GET", path, &[basic(AUTH.0, AUTH.1)], "")
}

/// Queries through the proxy until `stop`, bounded in count and time, so it has CPU to sample.
fn load(proxy_addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut c = RawConn::connect(&proxy_addr);
        c.handshake(APP_USER, APP_PASS, Some("test"))
            .expect("login through the proxy");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && n < 1_000_000 && Instant::now() < deadline {
            assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
            n += 1;
        }
        n
    })
}

#[test]
fn cpu_profile_is_pprof_protobuf_with_our_functions_one_at_a_time_behind_auth() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = format!("user = \"{}\"\npassword = \"{}\"\n", AUTH.0, AUTH.1);
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();

    for path in [
        "/debug/pprof/profile?seconds=1",
        "/api/debug/pprof/",
        "/debug/pprof/cmdline",
    ] {
        assert_eq!(http(port, "GET", path, &[], "").status, 401, "{path}");
        let wrong = basic(AUTH.0, "nope");
        assert_eq!(http(port, "GET", path, &[wrong], "").status, 401, "{path}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2).map(|_| load(proxy.addr(), stop.clone())).collect();
    // Two profiles asked for at once, under both prefixes: one is taken, the other refused.
    let second = std::thread::spawn(move || get(port, "/api/debug/pprof/profile?seconds=2"));
    let first = get(port, "/debug/pprof/profile?seconds=2");
    let second = second.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let queries: u32 = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    eprintln!("{queries} queries ran during the profile");
    let (ok, refused) = if first.0 == 200 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(refused.0, 409, "{}", String::from_utf8_lossy(&refused.2));
    let why = String::from_utf8_lossy(&refused.2);
    assert!(why.contains("already being taken"), "{why}");
    assert!(
        refused.1.to_ascii_lowercase().contains("x-go-pprof: 1"),
        "{}",
        refused.1
    );
    assert!(ok.1.contains("application/octet-stream"), "{}", ok.1);

    let mut raw = Vec::new();
    GzDecoder::new(&ok.2[..])
        .read_to_end(&mut raw)
        .expect("the profile is gzip'd");
    let p = Profile::decode(&raw[..]).expect("the profile is profile.proto");
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(p.string_table.first().map(String::as_str), Some(""));
    let types: Vec<_> = p
        .sample_type
        .iter()
        .map(|v| (s(v.r#type), s(v.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(p.period, 10_000_000, "100 Hz, as Go samples");
    assert!(!p.sample.is_empty(), "no samples while queries ran");
    assert!(p
        .sample
        .iter()
        .all(|x| x.value.len() == 2 && x.value[0] > 0));
    assert!(p.sample.iter().all(|x| !x.location_id.is_empty()));
    let names: Vec<&str> = p.function.iter().map(|f| s(f.name)).collect();
    // A debug build names our functions by path; a release one (line tables only) by bare name,
    // with our source files still named.
    let ours = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
    assert!(
        p.function
            .iter()
            .any(|f| s(f.name).starts_with("tiproxy::") || s(f.filename).starts_with(ours)),
        "no function of ours among {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("perf_signal_handler")),
        "the sampler's own frames are cut: {names:?}"
    );

    // The slot is free again once the profile is served.
    let (status, _, body) = get(port, "/debug/pprof/profile?seconds=1");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = get(port, "/debug/pprof/profile?seconds=301");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn text_views_and_go_only_profiles_say_what_they_are() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.extra_api = format!("user = \"{}\"\npassword = \"{}\"\n", AUTH.0, AUTH.1);
    let proxy = Proxy::start(&cfg);
    let port = proxy.api_port();
    let text = |path: &str| {
        let (status, head, body) = get(port, path);
        (status, head, String::from_utf8_lossy(&body).into_owned())
    };

    let (status, _, index) = text("/debug/pprof/");
    assert_eq!(status, 200);
    for offered in [
        "profile?seconds=30",
        "goroutine?debug=1",
        "heap?debug=1",
        "cmdline",
    ] {
        assert!(index.contains(offered), "{offered}: {index}");
    }

    let (status, head, _) = text("/debug/pprof");
    assert_eq!(status, 301, "the index's relative links need the slash");
    assert!(head.contains("location: /debug/pprof/"), "{head}");

    let (status, _, argv) = text("/api/debug/pprof/cmdline");
    assert_eq!(status, 200);
    let args: Vec<&str> = argv.split('\0').collect();
    assert_eq!(args.get(1), Some(&"--config"), "{args:?}");

    let mut session = RawConn::connect(&proxy.addr());
    session
        .handshake(APP_USER, APP_PASS, Some("test"))
        .expect("login through the proxy");
    for path in [
        "/debug/pprof/goroutine?debug=1",
        "/debug/pprof/goroutine?debug=2",
    ] {
        let (status, _, threads) = text(path);
        assert_eq!(status, 200, "{threads}");
        // Go's first line, so scripts that read the count keep working; the count is of threads.
        assert!(
            threads.starts_with("goroutine profile: total "),
            "{threads}"
        );
        assert!(threads.contains("OS threads"), "{threads}");
        // The kernel keeps 15 bytes of a thread name, so "tiproxy-worker-0" reads "tiproxy-worker-".
        assert!(threads.contains("tiproxy-worker-"), "{threads}");
        assert!(threads.contains("# client sessions: 1"), "{threads}");
    }

    let (status, _, heap) = text("/debug/pprof/heap?debug=1");
    assert_eq!(status, 200, "{heap}");
    assert!(
        heap.contains("in_use_bytes ") && heap.contains("VmRSS:"),
        "{heap}"
    );
    for path in [
        "/debug/pprof/heap",
        "/debug/pprof/allocs",
        "/debug/pprof/goroutine",
        "/debug/pprof/mutex",
        "/debug/pprof/trace",
    ] {
        let (status, head, why) = text(path);
        assert_eq!(status, 501, "{path}: {why}");
        assert!(why.contains("not a Go program"), "{path}: {why}");
        // go tool pprof prints the body of an error marked so.
        assert!(
            head.to_ascii_lowercase().contains("x-go-pprof: 1"),
            "{head}"
        );
    }
    assert_eq!(text("/debug/pprof/nonsense").0, 404);
    assert_eq!(
        http_bytes(
            port,
            "POST",
            "/debug/pprof/profile",
            &[basic(AUTH.0, AUTH.1)],
            ""
        )
        .0,
        405
    );
}
