//! The relay, the transaction tracking and the rebuild at every failure boundary, over
//! in-memory pipes instead of sockets: a reply lost before, during and after COMMIT, a failure
//! between the statements of a transaction, and a rebuild with a handshake database, 10,000
//! SETs and prepared statements whose ids differ on the new backend.

use super::outcome::{fate, Fate, InFlight};
use super::stmt_ids::StmtIds;
use crate::protocol::constants::{cmd, status};
use crate::protocol::stream::memory_pair;
use crate::protocol::PacketConn;
use crate::proxy::migrate::{restore, state::Tracked};
use crate::proxy::relay::{relay, OnePacket, RelayError};
use crate::proxy::response::{ResponseObserver, Shape};
use crate::proxy::txn::TxnState;

const OK_AUTOCOMMIT: [u8; 7] = [0, 0, 0, 0x02, 0, 0, 0];

fn conn(s: crate::protocol::Stream) -> PacketConn {
    PacketConn::new(s, 4096)
}

/// client <-> proxy <-> backend, with the proxy's two ends returned in the middle.
fn wires() -> (PacketConn, PacketConn, PacketConn, PacketConn) {
    let (client, proxy_client) = memory_pair(1 << 16);
    let (proxy_backend, backend) = memory_pair(1 << 16);
    (
        conn(client),
        conn(proxy_client),
        conn(proxy_backend),
        conn(backend),
    )
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![cmd::QUERY];
    p.extend_from_slice(sql.as_bytes());
    p
}

fn in_flight(sql: &str) -> InFlight<'_> {
    InFlight {
        command: cmd::QUERY,
        text: Some(sql.as_bytes()),
        whole: true,
        multi_statements: false,
    }
}

/// A session inside a transaction, as its last OK left it.
fn in_transaction() -> TxnState {
    let mut t = TxnState::default();
    t.after_command(
        &[cmd::QUERY],
        Some(status::IN_TRANS | status::AUTOCOMMIT),
        true,
    );
    t
}

/// Sends `sql` from the client through the proxy to a backend that reads it and writes
/// `answer` before closing (`Some`), or closes without reading (`None`); then relays the
/// answer. Returns what the proxy concluded and what the client got.
async fn exchange(
    sql: &str,
    txn: &mut TxnState,
    answer: Option<Vec<u8>>,
) -> (Result<(), Fate>, Vec<u8>) {
    let (mut client, mut proxy_client, mut proxy_backend, mut backend) = wires();
    client.write_packet(0, &query(sql)).await.unwrap();
    proxy_client.fill().await.unwrap();
    let before = txn.status();
    let acting = match answer {
        None => {
            drop(backend);
            None
        }
        Some(answer) => Some(tokio::spawn(async move {
            backend.read_packet(1 << 20).await.unwrap();
            backend.write_raw(&answer).await.unwrap();
        })),
    };
    let mut seq = 0;
    let sent = relay(
        &mut proxy_client,
        &mut proxy_backend,
        &mut OnePacket,
        &mut seq,
    )
    .await;
    if let Some(task) = acting {
        task.await.unwrap();
    }
    let result = match sent {
        Err(RelayError::Dest(_)) => Err(fate(before, false, &in_flight(sql))),
        Err(e) => panic!("{e:?}"),
        Ok(()) => {
            let mut obs = ResponseObserver::new(Shape::ResultSets, false);
            match relay(&mut proxy_backend, &mut proxy_client, &mut obs, &mut seq).await {
                Ok(()) => {
                    txn.after_command(&[cmd::QUERY], obs.status, obs.error.is_none());
                    Ok(())
                }
                Err(RelayError::Source(_)) => Err(fate(before, true, &in_flight(sql))),
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    drop(proxy_client);
    while let Ok(n) = client.fill().await {
        if n == 0 {
            break;
        }
    }
    (result, client.buffered().to_vec())
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    crate::protocol::conn::put_header(&mut p, payload.len(), seq);
    p.extend_from_slice(payload);
    p
}

#[tokio::test]
async fn commit_lost_before_it_was_sent_rolls_the_transaction_back() {
    let mut txn = in_transaction();
    let (r, got) = exchange("COMMIT", &mut txn, None).await;
    assert_eq!(r, Err(Fate::RolledBack));
    assert!(got.is_empty());
}

#[tokio::test]
async fn commit_whose_answer_is_cut_off_is_unknown() {
    let mut txn = in_transaction();
    // half an OK packet, then the connection ends
    let half = packet(1, &OK_AUTOCOMMIT)[..6].to_vec();
    let (r, got) = exchange("COMMIT", &mut txn, Some(half)).await;
    assert_eq!(r, Err(Fate::Unknown));
    assert!(
        got.is_empty(),
        "a partial packet never reaches the client: {got:?}"
    );
    // and with no answer at all
    let mut txn = in_transaction();
    let (r, _) = exchange("COMMIT", &mut txn, Some(vec![])).await;
    assert_eq!(r, Err(Fate::Unknown));
}

#[tokio::test]
async fn commit_answered_before_the_backend_died_is_committed() {
    let mut txn = in_transaction();
    let ok = packet(1, &OK_AUTOCOMMIT);
    let (r, got) = exchange("COMMIT", &mut txn, Some(ok.clone())).await;
    assert_eq!(r, Ok(()));
    assert_eq!(got, ok, "the client got the OK");
    assert!(txn.at_boundary());
    // The next statement finds the backend gone and is never sent: not executed.
    let (r, _) = exchange("INSERT INTO t VALUES (1)", &mut txn, None).await;
    assert_eq!(r, Err(Fate::NotExecuted));
}

#[tokio::test]
async fn failure_between_statements_of_a_transaction_rolls_it_back() {
    let mut txn = in_transaction();
    let (r, _) = exchange("INSERT INTO t VALUES (2)", &mut txn, None).await;
    assert_eq!(r, Err(Fate::RolledBack), "never sent");
    let mut txn = in_transaction();
    let (r, _) = exchange("UPDATE t SET v = 1", &mut txn, Some(vec![])).await;
    assert_eq!(
        r,
        Err(Fate::RolledBack),
        "sent, answer lost: it cannot have committed"
    );
}

/// A backend that answers COM_QUERY with OK and COM_STMT_PREPARE with ids from `first_id`,
/// and records what it ran.
async fn scripted_backend(mut b: PacketConn, first_id: u32) -> Vec<String> {
    let mut ran = Vec::new();
    let mut next_id = first_id;
    while let Ok((_, p)) = b.read_packet(1 << 20).await {
        match p.first() {
            Some(&cmd::QUERY) => {
                ran.push(String::from_utf8_lossy(&p[1..]).into_owned());
                b.write_packet(1, &OK_AUTOCOMMIT).await.unwrap();
            }
            Some(&cmd::STMT_PREPARE) => {
                ran.push(format!("PREPARE {}", String::from_utf8_lossy(&p[1..])));
                let mut ok = vec![0];
                ok.extend_from_slice(&next_id.to_le_bytes());
                ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
                next_id += 1;
                b.write_packet(1, &ok).await.unwrap();
            }
            _ => break,
        }
    }
    ran
}

#[tokio::test]
async fn rebuild_restores_the_handshake_database_10000_sets_and_prepared_ids() {
    let mut tracked = Tracked::default();
    tracked.after_init_db(b"app");
    for i in 0..10_000 {
        tracked.after_query(format!("SET @v{} = {i}", i % 100).as_bytes(), true);
        tracked.after_query(format!("SET sql_mode = 'M{i}'").as_bytes(), true);
    }
    // The client holds statements 3 and 9 from the old backend.
    tracked.after_prepare(3, b"SELECT ?", true);
    tracked.after_prepare(9, b"INSERT INTO t VALUES (?)", true);
    assert!(tracked.incomplete.is_none());
    let statements: Vec<String> = tracked
        .settings
        .statements()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert_eq!(statements.len(), 1 + 100 + 1);

    let (proxy_end, backend_end) = memory_pair(1 << 16);
    let server = tokio::spawn(scripted_backend(conn(backend_end), 1));
    let mut new = conn(proxy_end);
    let ids = restore::replay(&mut new, &statements, &tracked, false)
        .await
        .unwrap();
    drop(new);
    let ran = server.await.unwrap();
    assert_eq!(ran[0], "USE `app`");
    assert!(ran.contains(&"SET sql_mode = 'M9999'".to_owned()));
    assert!(ran.contains(&"SET @v0 = 9900".to_owned()));
    assert!(ran.contains(&"SET @v99 = 9999".to_owned()));
    assert!(!ran.contains(&"SET sql_mode = 'M9998'".to_owned()));
    assert_eq!(ids, vec![(3, 1), (9, 2)]);
    let mut map = StmtIds::rebuilt(ids);
    assert_eq!(map.backend_id(3), 1);
    assert_eq!(map.backend_id(9), 2);
    // the new backend's next statement is 3 there; the client already holds a 3
    assert_eq!(map.on_prepared(3), 4);
}
