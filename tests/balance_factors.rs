//! Balancing on TiDB load end to end: real MariaDB servers hold the sessions, each paired with
//! a scripted TiDB status port whose `/metrics` CPU figure the test changes, all discovered
//! through PD's topology in a real etcd with zone labels. A busy backend sheds sessions, an
//! idle one gains them, sessions stay in the proxy's zone, and flipping the load back and forth
//! makes no session return to a backend it left.

mod common;

use common::mariadb::MariaDb;
use common::pd::{wait_for, Etcd, Proxy};
use common::tidb_metrics::{proxy_metrics, register, TidbStatus};
use mysql_async::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The backend port of each held session, read through the session itself.
async fn ports(sessions: &mut [mysql_async::Conn]) -> Vec<u16> {
    let mut out = Vec::with_capacity(sessions.len());
    for c in sessions.iter_mut() {
        let p: Option<u16> =
            tokio::time::timeout(Duration::from_secs(10), c.query_first("SELECT @@port"))
                .await
                .expect("a held session answers")
                .expect("a held session answers");
        out.push(p.unwrap_or(0));
    }
    out
}

fn count(ports: &[u16], port: u16) -> usize {
    ports.iter().filter(|p| **p == port).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_tidbs_shed_idle_ones_gain_zones_hold_and_nothing_ping_pongs() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let dbs = MariaDb::start_many(3);
    // Moving a MariaDB session needs the service account to read its state.
    for db in &dbs {
        db.sql(
            "CREATE USER 'svc'@'%' IDENTIFIED BY 'svcpass'; GRANT SELECT ON mysql.* TO 'svc'@'%'",
        );
    }
    let (a, b, far) = (&dbs[0], &dbs[1], &dbs[2]);
    let sa = TidbStatus::start(0.1).await;
    let sb = TidbStatus::start(0.1).await;
    let sfar = TidbStatus::start(0.0).await;
    register(&mut kv, &a.addr(), sa.port, "z1").await;
    register(&mut kv, &b.addr(), sb.port, "z1").await;
    register(&mut kv, &far.addr(), sfar.port, "z2").await;
    let proxy = Proxy::start(
        &format!(
            "pd-addrs = \"{}\"\n[proxy.service-account]\nuser = \"svc\"\npassword = \"svcpass\"",
            etcd.endpoint()
        ),
        "[labels]\nzone = \"z1\"\n[balance]\nlabel-name = \"zone\"\n",
    )
    .await;

    // Every TiDB is scored (the label factor counts from the start) before sessions open.
    let all = [a.addr(), b.addr(), far.addr()];
    wait_for(
        "all three TiDBs to be scored",
        Duration::from_secs(20),
        || async {
            let m = proxy_metrics(proxy.api_port).await;
            all.iter()
                .all(|addr| {
                    m.contains(&format!(
                        "tiproxy_balance_b_score{{backend=\"{addr}\",factor=\"label\"}}"
                    ))
                })
                .then_some(())
        },
    )
    .await;

    // Zones: twelve sessions, none on the other zone's idle TiDB, split over the two in ours.
    // No switch to the backend's Unix socket behind the proxy's back.
    let opts =
        mysql_async::Opts::from_url(&format!("{}?prefer_socket=false", proxy.url())).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..12 {
        sessions.push(
            mysql_async::Conn::new(opts.clone())
                .await
                .expect("session through the proxy"),
        );
    }
    let start = ports(&mut sessions).await;
    assert_eq!(
        count(&start, far.port()),
        0,
        "no session leaves the zone: {start:?}"
    );
    assert!(
        count(&start, a.port()) >= 4 && count(&start, b.port()) >= 4,
        "split in the zone: {start:?} (a {}, b {}, far {})\n{}",
        a.port(),
        b.port(),
        far.port(),
        proxy_metrics(proxy.api_port).await
    );

    // A busy TiDB sheds to the idle one in the same zone, never to the other zone.
    sa.set_usage(0.95);
    let shed_by = Instant::now() + Duration::from_secs(40);
    let moved = loop {
        let now = ports(&mut sessions).await;
        if count(&now, a.port()) == 0 {
            break now;
        }
        assert!(
            Instant::now() < shed_by,
            "the busy TiDB kept sessions: {now:?}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        count(&moved, b.port()),
        12,
        "the idle TiDB gained them: {moved:?}"
    );
    let m = proxy_metrics(proxy.api_port).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("tiproxy_balance_migrate_total")
                && l.contains("reason=\"cpu\"")
                && l.contains("migrate_res=\"succeed\"")),
        "cpu moves are counted:\n{m}"
    );

    // The busy TiDB gets no new sessions either, though it now has the fewest.
    for _ in 0..3 {
        let fresh = proxy.landing_port().await.expect("a new session");
        assert_eq!(fresh, b.port(), "a new session avoids the busy TiDB");
    }

    // Flip the load back and forth: no session goes back to the TiDB it left, and new
    // sessions go to whichever same-zone TiDB is idle by the last reading, never to z2.
    let mut history: HashMap<usize, Vec<u16>> =
        (0..sessions.len()).map(|i| (i, vec![moved[i]])).collect();
    for round in 0..4 {
        let (busy, idle) = if round % 2 == 0 {
            (&sb, &sa)
        } else {
            (&sa, &sb)
        };
        busy.set_usage(0.95);
        idle.set_usage(0.05);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (i, p) in ports(&mut sessions).await.into_iter().enumerate() {
                let h = history.get_mut(&i).unwrap();
                if h.last() != Some(&p) {
                    h.push(p);
                }
            }
        }
        let fresh = proxy.landing_port().await.expect("a new session");
        assert_ne!(fresh, far.port(), "new sessions stay in the zone");
    }
    for (i, h) in &history {
        let mut seen = std::collections::HashSet::new();
        let returned = h.iter().any(|p| !seen.insert(*p));
        assert!(
            !returned,
            "session {i} went back to a backend it left: {h:?}"
        );
        assert!(!h.contains(&far.port()), "session {i} left the zone: {h:?}");
    }
    for c in sessions {
        let _ = c.disconnect().await;
    }
}
