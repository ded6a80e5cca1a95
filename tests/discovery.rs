//! Discovery through PD against a real etcd and MariaDB servers standing in for TiDB: TiDBs
//! appear and leave with their ttl key or `/status`, the proxy registers itself and removes
//! only its own keys on exit.

mod common;

use common::pd::*;
use etcd_client::GetOptions;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(20);

/// Waits until a fresh session lands on `port`, keeping nothing open.
async fn wait_landing(proxy: &Proxy, port: u16, what: &str) {
    wait_for(what, SOON, || async {
        (proxy.landing_port().await.ok() == Some(port)).then_some(())
    })
    .await;
}

async fn keys(etcd: &mut etcd_client::Client, prefix: &str) -> Vec<(String, String)> {
    etcd.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidbs_follow_their_ttl_and_status_and_the_proxy_registers_itself() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let (a, b) = (Mariadb::start(), Mariadb::start());
    let (sa, sb) = (StatusServer::start().await, StatusServer::start().await);
    // Someone else's registration, which our exit must leave alone.
    let other = "/topology/tiproxy/10.0.0.9:6000/info";
    kv.put(other, "{}", None).await.unwrap();

    let mut proxy = Proxy::start(&format!("pd-addrs = \"{}\"", etcd.endpoint()), "").await;
    register_tidb(&mut kv, &a.addr(), sa.port).await;
    wait_landing(&proxy, a.port(), "a registered TiDB to get sessions").await;

    // Self-registration: info and ttl under our advertised address and SQL port.
    let ours = wait_for("our registration", SOON, || async {
        let k = keys(&mut etcd.client().await, "/topology/tiproxy/").await;
        let ours: Vec<_> = k.into_iter().filter(|(k, _)| k != other).collect();
        (ours.len() == 2).then_some(ours)
    })
    .await;
    let info = ours.iter().find(|(k, _)| k.ends_with("/info")).unwrap();
    assert!(
        info.0.ends_with(&format!(":{}/info", proxy.port)),
        "{}",
        info.0
    );
    let v: serde_json::Value = serde_json::from_str(&info.1).unwrap();
    assert_eq!(v["port"], proxy.port.to_string());
    assert_eq!(v["status_port"], proxy.api_port.to_string());
    assert!(v["ip"].as_str().is_some_and(|ip| !ip.is_empty()));
    let ttl = ours.iter().find(|(k, _)| k.ends_with("/ttl")).unwrap();
    assert!(ttl.1.parse::<u128>().is_ok(), "ttl is UnixNano: {}", ttl.1);

    // With two idle TiDBs, ties go to the first address in order: call it the preferred one.
    register_tidb(&mut kv, &b.addr(), sb.port).await;
    let ((first, s_first), (second, _)) = if a.addr() < b.addr() {
        ((&a, &sa), (&b, &sb))
    } else {
        ((&b, &sb), (&a, &sa))
    };
    wait_landing(&proxy, first.port(), "the preferred TiDB to get sessions").await;

    // A TiDB answering 500 on /status (draining) gets no new sessions.
    s_first.set(500);
    wait_landing(&proxy, second.port(), "a TiDB answering 500 to be skipped").await;
    for _ in 0..5 {
        assert_eq!(proxy.landing_port().await.unwrap(), second.port());
    }

    // Back to 200 it is preferred again; once its ttl key is gone it gets no new sessions.
    s_first.set(200);
    wait_landing(&proxy, first.port(), "a recovered TiDB to get sessions").await;
    kv.delete(format!("/topology/tidb/{}/ttl", first.addr()), None)
        .await
        .unwrap();
    wait_landing(&proxy, second.port(), "a TiDB without ttl to be dropped").await;
    for _ in 0..5 {
        assert_eq!(proxy.landing_port().await.unwrap(), second.port());
    }
    assert!(proxy.log().contains(&format!(
        "status port 127.0.0.1:{} answered 500",
        s_first.port
    )));

    // Graceful exit removes our two keys and nothing else.
    assert!(proxy.terminate().await, "graceful exit");
    let left: Vec<String> = keys(&mut kv, "/topology/tiproxy/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, [other.to_string()]);
    assert_eq!(
        keys(&mut kv, &format!("/topology/tidb/{}/", second.addr()))
            .await
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_outage_keeps_the_last_known_tidbs_and_is_logged_once() {
    let mut etcd = Etcd::start().await;
    let a = Mariadb::start();
    let sa = StatusServer::start().await;
    register_tidb(&mut etcd.client().await, &a.addr(), sa.port).await;
    let proxy = Proxy::start(&format!("pd-addrs = \"{}\"", etcd.endpoint()), "").await;
    wait_landing(&proxy, a.port(), "the TiDB to get sessions").await;

    etcd.kill();
    wait_for(
        "the outage to be noticed",
        Duration::from_secs(60),
        || async { proxy.log().contains("PD is unreachable").then_some(()) },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            proxy.landing_port().await.unwrap(),
            a.port(),
            "last known list is kept"
        );
    }
    etcd.restart().await;
    wait_for("PD to be back", Duration::from_secs(60), || async {
        proxy.log().contains("PD is reachable again").then_some(())
    })
    .await;
    let log = proxy.log();
    assert_eq!(log.matches("PD is unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("PD is reachable again").count(), 1);
    // Registered again once PD is back.
    wait_for("re-registration", SOON, || async {
        let k = keys(&mut etcd.client().await, "/topology/tiproxy/").await;
        (k.len() == 2).then_some(())
    })
    .await;
    assert_eq!(proxy.landing_port().await.unwrap(), a.port());
}
