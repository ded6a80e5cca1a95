//! Commands mysql_async never sends, driven with the raw client through the proxy: cursors,
//! long data, statement reset, field list, statistics, set option, quit.

mod common;

use common::mariadb::{APP_PASS, APP_USER};
use common::raw::{Param, RawConn, STATUS_CURSOR_EXISTS};

fn login(addr: &str) -> RawConn {
    RawConn::login(addr, APP_USER, APP_PASS, Some("test")).expect("login as app")
}

#[test]
fn cursor_fetch_in_batches() {
    let (db, proxy) = common::db_and_proxy();
    db.sql(
        "CREATE TABLE test.cur (id INT PRIMARY KEY, v VARCHAR(10)); \
         INSERT INTO test.cur SELECT seq, CONCAT('v', seq) FROM test.seq_1_to_25",
    );
    let mut c = login(&proxy.addr());
    let stmt = c
        .prepare("SELECT id, v FROM cur WHERE id > ? ORDER BY id")
        .unwrap();
    assert_eq!((stmt.params, stmt.columns), (1, 2));
    let res = c.execute(stmt, &[Param::Int(0)], true).unwrap();
    assert_eq!(res.len(), 1);
    assert!(
        res[0].rows.is_empty(),
        "a cursor sends no rows with EXECUTE"
    );
    assert_ne!(
        res[0].status & STATUS_CURSOR_EXISTS,
        0,
        "cursor flag expected"
    );
    let mut all = Vec::new();
    let mut done = false;
    // 25 rows in batches of 10: 10, 10, 5; then the last-row flag.
    for _ in 0..10 {
        let (rows, last) = c.fetch(stmt, 10).unwrap();
        all.extend(rows);
        if last {
            done = true;
            break;
        }
    }
    assert!(done, "cursor never reported its last row");
    assert_eq!(all.len(), 25);
    assert_eq!(all[0], vec![Some("1".into()), Some("v1".into())]);
    assert_eq!(all[24], vec![Some("25".into()), Some("v25".into())]);
    // A plain query in between cursors keeps the session in sync.
    assert_eq!(c.query_value("SELECT 5").as_deref(), Some("5"));
    // Re-executing opens a fresh cursor.
    c.execute(stmt, &[Param::Int(20)], true).unwrap();
    let (rows, _) = c.fetch(stmt, 100).unwrap();
    assert_eq!(rows.len(), 5);
    c.stmt_close(stmt);
    assert_eq!(c.query_value("SELECT 6").as_deref(), Some("6"));
}

#[test]
fn send_long_data_then_execute() {
    let (db, proxy) = common::db_and_proxy();
    db.sql("CREATE TABLE test.ld (id INT PRIMARY KEY, body LONGBLOB)");
    let mut c = login(&proxy.addr());
    let stmt = c.prepare("INSERT INTO ld VALUES (?, ?)").unwrap();
    // Three chunks, one of them bigger than a single 16 MiB packet would allow untouched.
    let chunks = [vec![b'a'; 1000], vec![b'b'; 100_000], vec![b'c'; 3_000_000]];
    for chunk in &chunks {
        c.send_long_data(stmt, 1, chunk);
    }
    let res = c
        .execute(stmt, &[Param::Int(1), Param::LongData], false)
        .unwrap();
    assert_eq!(res[0].affected_rows, 1);
    let total: usize = chunks.iter().map(Vec::len).sum();
    assert_eq!(
        c.query_value("SELECT LENGTH(body) FROM ld WHERE id = 1"),
        Some(total.to_string())
    );
    assert_eq!(
        c.query_value("SELECT MD5(body) = MD5(CONCAT(REPEAT('a',1000),REPEAT('b',100000),REPEAT('c',3000000))) FROM ld"),
        Some("1".into())
    );
}

#[test]
fn stmt_reset_discards_long_data_and_cursor() {
    let (db, proxy) = common::db_and_proxy();
    db.sql("CREATE TABLE test.r (id INT PRIMARY KEY, body TEXT)");
    let mut c = login(&proxy.addr());
    let stmt = c.prepare("INSERT INTO r VALUES (?, ?)").unwrap();
    c.send_long_data(stmt, 1, b"discarded");
    c.stmt_reset(stmt).unwrap();
    c.send_long_data(stmt, 1, b"kept");
    c.execute(stmt, &[Param::Int(1), Param::LongData], false)
        .unwrap();
    assert_eq!(c.query_value("SELECT body FROM r").as_deref(), Some("kept"));

    let sel = c.prepare("SELECT id FROM r").unwrap();
    c.execute(sel, &[], true).unwrap();
    c.stmt_reset(sel).unwrap();
    // After reset the cursor is closed: fetching is an error from the server.
    let err = c.fetch(sel, 1).unwrap_err();
    assert!(err.code > 0, "{err:?}");
    assert_eq!(c.query_value("SELECT 1").as_deref(), Some("1"));
}

#[test]
fn field_list_names_the_columns() {
    let (db, proxy) = common::db_and_proxy();
    db.sql("CREATE TABLE test.fl (alpha INT, beta VARCHAR(3), gamma DATE)");
    let mut c = login(&proxy.addr());
    assert_eq!(c.field_list("fl").unwrap(), vec!["alpha", "beta", "gamma"]);
    let err = c.field_list("missing").unwrap_err();
    assert_eq!(err.code, 1146, "{err:?}");
    assert_eq!(c.query_value("SELECT 2").as_deref(), Some("2"));
}

#[test]
fn statistics_and_ping() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy.addr());
    let stats = c.statistics();
    assert!(stats.starts_with("Uptime:"), "{stats}");
    c.ping().unwrap();
    assert_eq!(c.query_value("SELECT 3").as_deref(), Some("3"));
}

#[test]
fn set_option_toggles_multi_statements() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy.addr());
    assert_eq!(c.query("SELECT 1; SELECT 2").unwrap().len(), 2);
    c.set_multi_statements(false).unwrap();
    let err = c.query("SELECT 1; SELECT 2").unwrap_err();
    assert_eq!(err.code, 1064, "multi-statements must be off: {err:?}");
    c.set_multi_statements(true).unwrap();
    let res = c.query("SELECT 1; SELECT 2").unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!(res[1].rows, vec![vec![Some("2".to_string())]]);
}

#[test]
fn reset_connection_and_quit() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy.addr());
    c.query("SET @x = 1").unwrap();
    c.reset_connection().unwrap();
    assert_eq!(c.query_value("SELECT @x"), None);
    assert!(
        c.quit(),
        "the proxy must close the connection after COM_QUIT"
    );
}

#[test]
fn text_results_with_nulls_and_many_rows() {
    let (_db, proxy) = common::db_and_proxy();
    let mut c = login(&proxy.addr());
    let res = c
        .query("SELECT seq, IF(seq % 2 = 0, NULL, seq) FROM seq_1_to_5000")
        .unwrap();
    assert_eq!(res[0].rows.len(), 5000);
    assert_eq!(res[0].rows[1], vec![Some("2".into()), None]);
}
