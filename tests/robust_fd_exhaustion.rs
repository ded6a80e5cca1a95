//! The proxy out of file descriptors: new clients wait in the accept queue and are served once
//! descriptors are free again, the log names the limit to raise (once in ten seconds, not once
//! per retry), health probes that cannot make a socket leave the backend's state alone, and a
//! session that was already logged in keeps working throughout.

mod common;

use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::net::poll_until;
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Descriptors left to the proxy beyond those it holds when the limit is lowered: room for a
/// few sessions (two sockets each), so the limit is met within the loop below.
const HEADROOM: u64 = 9;
const MAX_ATTEMPTS: usize = 30;
const WARNING: &str = "cannot accept SQL connections: the process is out of file descriptors";

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the proxy's fd directory")
        .count() as u64
}

/// Sets the soft RLIMIT_NOFILE of process `pid`, keeping its hard limit.
fn set_fd_limit(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the limits of `pid` into `old`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit read: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: sets the soft limit of `pid` from `new`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit write: {}", std::io::Error::last_os_error());
}

/// The first bytes the proxy sends on `s` within `wait`, if any.
fn first_bytes(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn out_of_file_descriptors_queues_new_clients_and_names_the_limit() {
    let db = MariaDb::start();
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let mut bystander =
        RawConn::login(&proxy.addr(), APP_USER, APP_PASS, None).expect("login before the limit");
    let original = {
        let text = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("an open-files line")
            .to_string();
        line.split_whitespace()
            .nth(3)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let started = Instant::now();
    set_fd_limit(proxy.pid(), open_fds(proxy.pid()) + HEADROOM);

    // Clients that get their greeting fill the table; the first that gets nothing waits in
    // the queue. A client whose backend socket could not be made gets an error instead,
    // which must say why.
    let mut held = Vec::new();
    let mut waiting = None;
    for _ in 0..MAX_ATTEMPTS {
        let mut s = TcpStream::connect(proxy.addr()).expect("connect");
        let bytes = first_bytes(&mut s, Duration::from_secs(2));
        if bytes.is_empty() {
            waiting = Some(s);
            break;
        }
        if bytes.get(4) == Some(&0xff) {
            let text = String::from_utf8_lossy(&bytes[7..]).to_string();
            assert!(
                text.contains("open files") || text.contains("file descriptors"),
                "an error that does not say descriptors ran out: {text}"
            );
        }
        held.push(s);
    }
    let mut waiting = waiting.expect("every connection was served: the limit was never reached");
    let log = poll_until(Duration::from_secs(10), || {
        let log = proxy.log();
        log.contains(WARNING).then_some(log)
    })
    .unwrap_or_else(|| panic!("no '{WARNING}' warning in the log:\n{}", proxy.log()));
    assert!(
        log.contains("ulimit -n") && log.contains("LimitNOFILE"),
        "the warning does not say what to raise:\n{log}"
    );

    // The logged-in session is unaffected while new clients wait.
    assert_eq!(
        bystander.query_value("SELECT 41 + 1").as_deref(),
        Some("42")
    );

    // Descriptors come back: the waiting client is greeted without reconnecting.
    drop(held);
    let greeting = first_bytes(&mut waiting, Duration::from_secs(10));
    assert_eq!(
        greeting.get(4),
        Some(&10),
        "the queued client got no greeting once descriptors were free: {greeting:?}"
    );
    drop(waiting);

    // One warning in ten seconds, though two acceptors retry every 50 ms.
    let warnings = proxy.log().matches(WARNING).count() as u64;
    let secs = started.elapsed().as_secs();
    assert!(
        warnings <= 1 + secs / 10 + 1,
        "{warnings} warnings in {secs} s: the log is flooded"
    );

    set_fd_limit(proxy.pid(), original);
    let mut after = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, None)
        .expect("login once the limit is restored");
    assert_eq!(after.query_value("SELECT 1").as_deref(), Some("1"));
}
