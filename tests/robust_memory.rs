//! Bounded memory: a client that stops reading while a 200 MB result streams pushes back on
//! its backend instead of growing the proxy; RSS is read before, while stalled, and after.

mod common;

use common::mariadb::{APP_PASS, APP_USER};
use common::procfs::rss_kib;
use common::raw::RawConn;
use std::io::Read;
use std::time::Duration;

const ROW: usize = 1 << 20;
const ROWS: usize = 200;

#[test]
fn slow_reader_of_200mb_result_keeps_rss_bounded() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("test")).expect("login");
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
    let before = rss_kib(proxy.pid());

    let sql = format!("SELECT REPEAT('x', {ROW}) FROM seq_1_to_{ROWS}");
    let mut p = vec![(sql.len() + 1) as u8, 0, 0, 0, 0x03];
    p.extend_from_slice(sql.as_bytes());
    c.send_raw(&p);
    // Read nothing while the backend produces far more than every buffer on the way holds.
    std::thread::sleep(Duration::from_secs(3));
    let stalled = rss_kib(proxy.pid());

    // Now drain it all: the whole result must arrive intact after the stall.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let want = ROW * ROWS;
    while total < want {
        let n = c.stream.read(&mut buf).expect("read result");
        assert!(n > 0, "proxy closed after {total} bytes");
        total += n;
    }
    let after = rss_kib(proxy.pid());
    eprintln!("RSS KiB: before {before}, stalled {stalled}, after {after}; read {total} bytes");
    // One row is 1 MiB; a proxy that buffered the result would be 200 MiB up.
    assert!(
        stalled < before + 32 * 1024,
        "stalled RSS {stalled} KiB vs {before}"
    );
    assert!(
        after < before + 32 * 1024,
        "after RSS {after} KiB vs {before}"
    );
}
