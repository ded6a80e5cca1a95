//! Compressed-protocol bombs from real sockets: clients log in with CLIENT_COMPRESS, then send
//! one frame holding a zlib stream of 64 MiB (about 64 KiB on the wire) under a header that
//! states a different length. The stream is the start of a COM_QUERY that never ends, so
//! everything the proxy inflates is relayed to the backend as it would be from a client
//! sending it plain. The proxy inflates a frame a batch at a time, never more than its header
//! states, and closes the session without a reply once the stream goes past that. A normal
//! session keeps querying throughout; RSS is read before, at its peak and after.

mod common;

use common::bystander::Bystander;
use common::mariadb::{APP_PASS, APP_USER};
use common::procfs::{peak_rss_kib, rss_kib};
use common::raw::{RawConn, CLIENT_COMPRESS};
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const BOMB_INFLATED: usize = 64 << 20;
/// The largest uncompressed length a 3-byte frame header can state.
const MAX_CLAIM: usize = 0xff_ffff;
const SEQUENTIAL: usize = 6;
const CONCURRENT: usize = 6;

/// A zlib stream that inflates to `BOMB_INFLATED` bytes: the header of a COM_QUERY packet
/// of 16 MiB - 1 (so another must follow), the command byte, then zeros.
fn bomb() -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(&[0xff, 0xff, 0xff, 0, 0x03]).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = BOMB_INFLATED - 5;
    while left > 0 {
        let n = left.min(zeros.len());
        z.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    z.finish().unwrap()
}

/// One compressed-protocol frame: 3-byte compressed length, sequence id, 3-byte
/// uncompressed length (0 when `body` is not compressed), then `body`.
fn frame(seq: u8, stated_len: usize, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(7 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes()[..3]);
    f.push(seq);
    f.extend_from_slice(&(stated_len as u32).to_le_bytes()[..3]);
    f.extend_from_slice(body);
    f
}

/// Reads one frame and returns what it carries, inflated if it was compressed.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 7];
    s.read_exact(&mut h).expect("frame header");
    let clen = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let ulen = u32::from_le_bytes([h[4], h[5], h[6], 0]) as usize;
    let mut body = vec![0u8; clen];
    s.read_exact(&mut body).expect("frame body");
    if ulen == 0 {
        return body;
    }
    let mut out = Vec::with_capacity(ulen);
    ZlibDecoder::new(&body[..])
        .read_to_end(&mut out)
        .expect("inflate");
    out
}

/// A session logged in through the proxy with CLIENT_COMPRESS, checked with a COM_PING sent
/// and answered in compressed frames.
fn compressed_session(addr: &str) -> TcpStream {
    let mut c = RawConn::connect(addr);
    c.handshake_with(APP_USER, APP_PASS, Some("test"), CLIENT_COMPRESS)
        .expect("compressed login");
    let mut s = c.stream;
    s.write_all(&frame(0, 0, &[1, 0, 0, 0, 0x0e])).unwrap();
    let reply = read_frame(&mut s);
    assert_eq!(reply.get(4), Some(&0x00), "COM_PING answer: {reply:?}");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `bomb` under a header stating `claim` bytes and expects the session closed unanswered.
fn detonate(addr: &str, bomb: &[u8], claim: usize) {
    let mut s = compressed_session(addr);
    // Small enough for the socket buffers: the write completes however little the proxy reads.
    s.write_all(&frame(1, claim, bomb)).expect("send bomb");
    let sent = common::net::read_to_close(&mut s);
    assert!(sent.is_empty(), "expected a silent close, got {sent:?}");
}

#[test]
fn compressed_bombs_close_the_session_and_keep_memory_bounded() {
    let (_db, proxy) = common::db_and_proxy();
    let addr = proxy.addr();
    let bystander = Bystander::start(
        RawConn::login(&addr, APP_USER, APP_PASS, Some("test")).expect("bystander login"),
    );
    let bomb = bomb();
    assert!(bomb.len() < 128 * 1024, "bomb is {} bytes", bomb.len());
    // One clean compressed session first, so the codec's own first allocations are not
    // counted against the bombs.
    drop(compressed_session(&addr));
    let before = rss_kib(proxy.pid());

    // Headers that lie both ways: the largest claim (the stream inflates past it) and a
    // small one.
    for i in 0..SEQUENTIAL {
        detonate(&addr, &bomb, if i % 2 == 0 { MAX_CLAIM } else { 1000 });
    }
    let peak_one = peak_rss_kib(proxy.pid());
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENT {
            scope.spawn(|| detonate(&addr, &bomb, MAX_CLAIM));
        }
    });
    let peak_all = peak_rss_kib(proxy.pid());
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(proxy.pid());

    // The proxy still takes compressed sessions, and the bystander never noticed.
    drop(compressed_session(&addr));
    let queries = bystander.finish();
    eprintln!(
        "RSS KiB: before {before}, peak with one bomb at a time {peak_one}, peak with \
         {CONCURRENT} at once {peak_all}, after {after}; {} bombs of {} bytes, bystander ran \
         {queries} queries",
        SEQUENTIAL + CONCURRENT,
        bomb.len()
    );
    // A session holds a batch of inflated bytes at a time, not a frame: had the proxy
    // inflated whole frames as their headers allow, each bomb would take 16 MiB while it ran.
    assert!(
        peak_one < before + 16 * 1024,
        "peak RSS {peak_one} KiB with one bomb at a time, {before} KiB before"
    );
    assert!(
        peak_all < before + 16 * 1024,
        "peak RSS {peak_all} KiB with {CONCURRENT} bombs at once, {before} KiB before"
    );
    assert!(
        after < before + 16 * 1024,
        "RSS after the bombs {after} KiB vs {before} before"
    );
}
