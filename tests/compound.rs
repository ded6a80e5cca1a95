//! A corpus of MariaDB compound statements (`BEGIN NOT ATOMIC ... END`, labels, cursors,
//! handlers, loops) and transaction starts (`BEGIN`, `BEGIN WORK`, comments, `START
//! TRANSACTION`), each run through the proxy and straight to the same MariaDB: every result,
//! row, status flag and error must be the same, and no statement may hang the session.

mod common;

use common::client::builder;
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::{RawConn, Res, ResultSet};

/// Each case is a list of statements run in order on one session.
const CORPUS: &[&[&str]] = &[
    &["BEGIN NOT ATOMIC SELECT 1; END"],
    &["begin not atomic declare v int default 5; select v * 2; end"],
    // The hang: a stored-program cursor left open when the block returns a result.
    &[
        "BEGIN NOT ATOMIC DECLARE v INT; DECLARE c CURSOR FOR SELECT 42; \
       OPEN c; FETCH c INTO v; SELECT v; END",
    ],
    &[
        "BEGIN NOT ATOMIC DECLARE v INT; DECLARE c CURSOR FOR SELECT a FROM k ORDER BY a; \
       OPEN c; FETCH c INTO v; SELECT v AS first_a; FETCH c INTO v; SELECT v AS second_a; \
       CLOSE c; END",
    ],
    &[
        "BEGIN NOT ATOMIC DECLARE done INT DEFAULT 0; DECLARE s INT DEFAULT 0; DECLARE v INT; \
       DECLARE c CURSOR FOR SELECT a FROM k; \
       DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1; \
       OPEN c; r: LOOP FETCH c INTO v; IF done THEN LEAVE r; END IF; SET s = s + v; \
       END LOOP; CLOSE c; SELECT s; END",
    ],
    &["blk: BEGIN NOT ATOMIC SELECT 'labelled'; END blk"],
    &["/* leading */ BEGIN NOT ATOMIC -- a line comment\n SELECT 3; END"],
    &[
        "BEGIN NOT ATOMIC DECLARE i INT DEFAULT 0; WHILE i < 3 DO SET i = i + 1; END WHILE; \
       SELECT i; END",
    ],
    &[
        "BEGIN NOT ATOMIC IF (SELECT COUNT(*) FROM k) > 1 THEN SELECT 'many'; \
       ELSE SELECT 'few'; END IF; END",
    ],
    &["BEGIN NOT ATOMIC SELECT 1 AS a; SELECT 2 AS b, 'x' AS c; END"],
    &[
        "BEGIN NOT ATOMIC DECLARE CONTINUE HANDLER FOR SQLEXCEPTION SELECT 'handled'; \
       SELECT * FROM no_such_table; SELECT 'after'; END",
    ],
    &["BEGIN NOT ATOMIC SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom'; END"],
    &[
        "BEGIN NOT ATOMIC INSERT INTO w VALUES (1); UPDATE w SET a = a + 10; END",
        "SELECT a FROM w",
        "DELETE FROM w",
    ],
    // A compound statement inside a transaction neither starts nor ends one.
    &[
        "BEGIN",
        "BEGIN NOT ATOMIC INSERT INTO w VALUES (2); END",
        "SELECT @@in_transaction",
        "ROLLBACK",
        "SELECT COUNT(*) FROM w",
    ],
    &[
        "BEGIN",
        "SELECT @@in_transaction",
        "COMMIT",
        "SELECT @@in_transaction",
    ],
    &[
        "BEGIN WORK",
        "INSERT INTO w VALUES (3)",
        "ROLLBACK WORK",
        "SELECT COUNT(*) FROM w",
    ],
    &["begin /* c */ ;", "SELECT @@in_transaction", "ROLLBACK"],
    &[
        "/* app */ BEGIN -- x\n",
        "SELECT @@in_transaction",
        "ROLLBACK",
    ],
    &[
        "START TRANSACTION READ ONLY",
        "SELECT COUNT(*) FROM k",
        "COMMIT",
    ],
    &[
        "START TRANSACTION WITH CONSISTENT SNAPSHOT",
        "SELECT @@in_transaction",
        "COMMIT",
    ],
    &["BEGIN NOT ATOMIC BEGIN NOT ATOMIC SELECT 'nested'; END; END"],
    &["BEGIN NOT ATOMIC DECLARE x VARCHAR(10) DEFAULT 'BEGIN'; SELECT x; END"],
];

/// One result: column names, rows, affected rows, status flags.
type Result1 = (Vec<String>, Vec<Vec<Option<String>>>, u64, u16);

/// What a client sees from one statement.
#[derive(Debug, PartialEq)]
enum Seen {
    Results(Vec<Result1>),
    Error(u16, String, String),
}

fn seen(r: Res<Vec<ResultSet>>) -> Seen {
    match r {
        Ok(sets) => Seen::Results(
            sets.into_iter()
                .map(|s| (s.columns, s.rows, s.affected_rows, s.status))
                .collect(),
        ),
        Err(e) => Seen::Error(e.code, e.sqlstate, e.message),
    }
}

fn run_case(c: &mut RawConn, case: &[&str]) -> Vec<Seen> {
    let mut out: Vec<Seen> = case.iter().map(|sql| seen(c.query(sql))).collect();
    // The session must still answer afterwards.
    out.push(seen(c.query("SELECT 'alive'")));
    out
}

fn schema(db: &MariaDb, name: &str) {
    db.sql(&format!(
        "CREATE DATABASE {name}; \
         CREATE TABLE {name}.k (a INT PRIMARY KEY); INSERT INTO {name}.k VALUES (1), (2), (3); \
         CREATE TABLE {name}.w (a INT) ENGINE=InnoDB; \
         GRANT ALL ON {name}.* TO '{APP_USER}'@'%'"
    ));
}

#[test]
fn compound_statements_and_begin_forms_answer_as_the_server_does() {
    let db = MariaDb::start();
    schema(&db, "direct");
    schema(&db, "proxied");
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let mut direct = RawConn::login(&db.addr(), APP_USER, APP_PASS, Some("direct")).unwrap();
    let mut proxied = RawConn::login(&proxy.addr(), APP_USER, APP_PASS, Some("proxied")).unwrap();
    for case in CORPUS {
        eprintln!("case {case:?}");
        let want = run_case(&mut direct, case);
        let got = run_case(&mut proxied, case);
        assert_eq!(got, want, "case {case:?}\n{}", proxy.log());
    }
    eprintln!("{} cases compared with the server", CORPUS.len());
}

/// The same statement as mysql_async sees it (CLIENT_DEPRECATE_EOF framing): every result's
/// rows and affected rows, or the error.
async fn seen_async(c: &mut mysql_async::Conn, sql: &str) -> String {
    use mysql_async::prelude::*;
    let run = async {
        let mut r = c.query_iter(sql).await?;
        let mut out = Vec::new();
        while !r.is_empty() {
            let rows: Vec<mysql_async::Row> = r.collect().await?;
            let rows: Vec<Vec<mysql_async::Value>> = rows.into_iter().map(|r| r.unwrap()).collect();
            out.push(format!("{rows:?} affected {}", r.affected_rows()));
        }
        Ok::<_, mysql_async::Error>(out.join(" | "))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(20), run).await {
        Ok(Ok(s)) => s,
        Ok(Err(mysql_async::Error::Server(e))) => {
            format!("ERR {} {} {}", e.code, e.state, e.message)
        }
        Ok(Err(e)) => format!("client error {e}"),
        Err(_) => "no answer within 20 s".into(),
    }
}

#[tokio::test]
async fn the_corpus_answers_alike_with_deprecate_eof_framing() {
    let db = MariaDb::start();
    schema(&db, "direct");
    schema(&db, "proxied");
    let proxy = Proxy::start(&ProxyConfig::new(vec![db.addr()]));
    let connect = |port: u16, schema: &str| {
        mysql_async::Conn::new(builder(port, APP_USER, APP_PASS).db_name(Some(schema.to_owned())))
    };
    let mut direct = connect(db.port(), "direct").await.unwrap();
    let mut proxied = connect(proxy.port(), "proxied").await.unwrap();
    for case in CORPUS {
        for sql in case.iter().chain(&["SELECT 'alive'"]) {
            let want = seen_async(&mut direct, sql).await;
            let got = seen_async(&mut proxied, sql).await;
            assert_eq!(got, want, "{sql}\n{}", proxy.log());
        }
    }
}
