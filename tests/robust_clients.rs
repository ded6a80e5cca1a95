//! Hostile clients: garbage instead of a handshake, a 16 MiB length claim, truncated packets,
//! silent sockets and a flood of connections past max-connections, all while a normal session
//! keeps querying; the proxy's RSS is read before and after. Also how much a refused flood
//! logs, a client that falls silent in the middle of a command, and PROXY protocol v2 on the
//! SQL port, with and without a valid header.

mod common;

use common::bystander::Bystander;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::procfs::rss_kib;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::{parse_err, RawConn};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: u64 = 300;
const FLOOD: usize = 1500;
const SILENT: usize = 200;
const GARBAGE: usize = 50;

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the proxy closes; returns what it sent (`net::read_to_close` on an owned socket).
fn read_to_close(mut s: TcpStream) -> Vec<u8> {
    common::net::read_to_close(&mut s)
}

/// The error code of the last packet in `bytes` (greeting first, then an ERR), if any.
fn last_err_code(bytes: &[u8]) -> Option<u16> {
    let mut pos = 0;
    let mut last = None;
    while pos + 4 <= bytes.len() {
        let len = usize::from(bytes[pos]) | usize::from(bytes[pos + 1]) << 8;
        let p = bytes.get(pos + 4..pos + 4 + len)?;
        if p.first() == Some(&0xff) {
            last = Some(parse_err(p).code);
        }
        pos += 4 + len;
    }
    last
}

fn read_greeting(s: &mut TcpStream) {
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).expect("greeting header");
    let len = usize::from(hdr[0]) | usize::from(hdr[1]) << 8;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).expect("greeting");
    assert_eq!(p[0], 10, "expected a greeting");
}

#[test]
fn hostile_clients_never_disturb_a_normal_session() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.max_connections = MAX_CONNECTIONS;
    cfg.client_handshake_timeout = 2;
    let proxy = Proxy::start(&cfg);
    let addr = proxy.addr();
    let c = RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("login");
    let bystander = Bystander::start(c);
    let rss_before = rss_kib(proxy.pid());

    // HTTP (or any text) where a MySQL client would wait for the greeting: "GET " reads as a
    // 5.5 MB length claim, far over the handshake limit.
    let garbage: Vec<_> = (0..GARBAGE)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: tiproxy\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    for s in garbage {
        assert_eq!(last_err_code(&read_to_close(s)), Some(1043));
    }

    // A handshake response whose header claims 16 MiB - 1.
    let mut s = connect(&addr);
    read_greeting(&mut s);
    s.write_all(&[0xff, 0xff, 0xff, 0x01, 0x8d, 0xa6]).unwrap();
    assert_eq!(last_err_code(&read_to_close(s)), Some(1043));

    // Truncated: 10 of 100 promised bytes, then the client half-closes...
    let mut s = connect(&addr);
    read_greeting(&mut s);
    s.write_all(&[100, 0, 0, 1]).unwrap();
    s.write_all(&[0x8d; 10]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_to_close(s);
    // ...or stays silent after them: the handshake timeout ends it.
    let mut s = connect(&addr);
    read_greeting(&mut s);
    s.write_all(&[100, 0, 0, 1, 0x8d, 0xa6]).unwrap();
    assert_eq!(last_err_code(&read_to_close(s)), Some(1159));

    // Sockets that connect and say nothing: each gets 1159 after the handshake timeout, or
    // 1040 at once past max-handshakes-per-source (100 from one address by default).
    let started = Instant::now();
    let silent: Vec<_> = (0..SILENT).map(|_| connect(&addr)).collect();
    for s in silent {
        let code = last_err_code(&read_to_close(s));
        assert!(matches!(code, Some(1159 | 1040)), "{code:?}");
    }
    // Each read above ends only when the proxy closes (a socket it kept would fail the read
    // timeout instead), so how long this took is reported, not asserted.
    eprintln!("{SILENT} silent sockets closed in {:?}", started.elapsed());

    // A flood: every connection is either greeted (up to the limit) or refused with 1040.
    let flood: Vec<_> = (0..FLOOD).map(|_| connect(&addr)).collect();
    let rss_flood = rss_kib(proxy.pid());
    let (mut greeted, mut refused) = (0, 0);
    for s in flood {
        match last_err_code(&read_to_close(s)) {
            Some(1040) => refused += 1,
            Some(1159) => greeted += 1,
            other => panic!("flood connection ended with {other:?}"),
        }
    }
    // Admitted ones free their slot after the handshake timeout and the backlog drains into
    // it, so more than the limit are greeted over the whole flood, never at once.
    assert_eq!(greeted + refused, FLOOD);
    assert!(refused > 0, "max-connections never refused anyone");

    // Everything hostile is gone; the session count falls back to the bystander alone.
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(proxy.pid());
    let queries = bystander.finish();
    eprintln!(
        "RSS KiB: before {rss_before}, during flood {rss_flood}, after {rss_after}; \
         bystander ran {queries} queries; flood: {greeted} greeted, {refused} refused"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// Connections refused with 1040 log a few lines a second, the rest counted into the next line
/// (`suppressed`), so a flood cannot flood the log; every refused client still gets its ERR.
#[test]
fn refused_flood_logs_a_few_lines_and_counts_the_rest() {
    const REFUSED: usize = 300;
    const LINES_PER_SECOND: usize = 5;
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.max_connections = 2;
    let proxy = Proxy::start(&cfg);
    let addr = proxy.addr();
    // The two sessions the limit allows, one of them querying throughout.
    let _held = RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("login");
    let bystander = Bystander::start(
        RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("bystander login"),
    );

    let started = Instant::now();
    let flood: Vec<_> = (0..REFUSED).map(|_| connect(&addr)).collect();
    for s in flood {
        assert_eq!(last_err_code(&read_to_close(s)), Some(1040));
    }
    let flood_time = started.elapsed();
    // One more after the rate window has passed: its line carries the count of the unlogged.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(last_err_code(&read_to_close(connect(&addr))), Some(1040));
    let queries = bystander.finish();

    let log = proxy.log_file();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection rejected: too many connections"))
        .collect();
    let suppressed: usize = lines
        .iter()
        .map(|l| {
            let v = l.split("[suppressed=").nth(1).expect("suppressed field");
            v[..v.find(']').expect("field end")]
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    eprintln!(
        "{} refused in {flood_time:?}, then 1 more: {} log lines, {suppressed} counted in them; \
         bystander ran {queries} queries",
        REFUSED,
        lines.len()
    );
    assert_eq!(lines.len() + suppressed, REFUSED + 1, "{log}");
    // Fixed one-second windows: the flood touches at most one more than it lasted.
    let windows = flood_time.as_secs() as usize + 2;
    assert!(
        lines.len() <= LINES_PER_SECOND * windows + 1,
        "{} lines for a flood of {flood_time:?}",
        lines.len()
    );
}

fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = tiproxy::protocol::proxy_protocol::SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&6000u16.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_v2_sets_the_client_address() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.proxy_protocol = "v2".into();
    cfg.client_handshake_timeout = 2;
    // The test MariaDB takes no PROXY header from us.
    cfg.extra_proxy = "backend-proxy-protocol = \"off\"\n".into();
    let proxy = Proxy::start(&cfg);

    let mut c = RawConn::connect(&proxy.addr());
    c.send_raw(&v2_header([203, 0, 113, 7], 40123));
    c.handshake(APP_USER, APP_PASS, Some("test"))
        .expect("login behind a balancer");
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
    let listed = poll_until(Duration::from_secs(5), || {
        let body = common::cli::run(
            std::process::Command::new("curl").args([
                "-s",
                &format!("http://127.0.0.1:{}/api/connections", proxy.api_port()),
            ]),
            Duration::from_secs(5),
        )
        .stdout;
        body.contains("203.0.113.7:40123").then_some(())
    });

    // A plain MySQL client (no header) is closed without a greeting, and the log says why.
    let mut plain = connect(&proxy.addr());
    plain.write_all(b"\x0a\x00\x00\x00garbage!!!!!!!!").unwrap();
    assert!(read_to_close(plain).is_empty(), "greeted without a header");
    // A silent one too, after the handshake timeout.
    let silent = connect(&proxy.addr());
    assert!(read_to_close(silent).is_empty());
    let log = proxy.log();
    assert!(log.contains("no valid PROXY protocol v2 header"), "{log}");
    assert!(listed.is_some(), "client address not taken from the header");
}

#[test]
fn client_silent_in_the_middle_of_a_command_is_closed_but_idle_is_not() {
    let db = MariaDb::start();
    let mut cfg = ProxyConfig::new(vec![db.addr()]);
    cfg.client_read_timeout = 2;
    let proxy = Proxy::start(&cfg);
    let addr = proxy.addr();
    let bystander =
        Bystander::start(RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("login"));

    // Idle between commands for longer than the limit: still served.
    let mut idle = RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("login");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(idle.query_value("SELECT 41 + 1").as_deref(), Some("42"));

    // A COM_QUERY header promising 100 bytes, 10 of them sent, then silence.
    let mut stalled = RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("login");
    let started = Instant::now();
    stalled.send_raw(&[
        101, 0, 0, 0, 0x03, b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1', b' ',
    ]);
    let closed = stalled.read_packet();
    let waited = started.elapsed();
    assert!(
        closed.is_err() || closed.as_ref().is_ok_and(|p| p.is_empty()),
        "expected the proxy to close the stalled session, got {closed:?}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "closed after {waited:?} with client-read-timeout = 2"
    );
    let logged = poll_until(Duration::from_secs(5), || {
        proxy.log().contains("client-read-timeout").then_some(())
    });
    assert!(logged.is_some(), "the close must say why:\n{}", proxy.log());
    // The same limit ends a LOAD DATA-like upload that stops mid-way just as well; and the
    // others never noticed.
    assert_eq!(idle.query_value("SELECT 7").as_deref(), Some("7"));
    bystander.finish();
}
