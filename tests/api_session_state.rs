//! /api/connections tells a session running a command from an idle one: `executing` while a
//! `SELECT SLEEP` runs, `idle` once it returns.

mod common;

use common::ops::*;
use mysql_async::prelude::Queryable;

async fn state_of_only_session(app: &tiproxy::app::App) -> String {
    let conns = json(&get(&plain(app), "/api/connections").await);
    conns["connections"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_statement_shows_as_executing_then_idle() {
    let db = MariaDb::start();
    let app = start(test_config(&[db.addr()])).await;
    let mut conn = connect(&app).await;
    conn.query_drop("SELECT 1").await.unwrap();
    let idle = eventually(50, || async { state_of_only_session(&app).await == "idle" }).await;
    assert!(idle, "a session between statements is idle");

    let sleeper = tokio::spawn(async move {
        conn.query_drop("SELECT SLEEP(5)").await.unwrap();
        conn
    });
    let executing = eventually(100, || async {
        state_of_only_session(&app).await == "executing"
    })
    .await;
    assert!(executing, "never shown as executing during SELECT SLEEP(5)");
    let conn = sleeper.await.unwrap();
    // The flag drops just after the answer is relayed, so the client may ask a moment early.
    let idle = eventually(50, || async { state_of_only_session(&app).await == "idle" }).await;
    assert!(idle, "still not idle after the statement returned");
    conn.disconnect().await.unwrap();
}
