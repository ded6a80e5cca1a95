//! Discovery through PD against a real etcd and MariaDB servers standing in for TiDB: TiDBs
//! appear and leave with their ttl key or `/status`, the proxy registers itself and removes
//! only its own keys on exit.

mod support_disc;

use etcd_client::GetOptions;
use std::time::Duration;
use support_disc::*;

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
    wait_landing(&proxy, a.port, "a registered TiDB to get sessions").await;

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

    // A second TiDB: with a session held on A, the next one goes to B.
    let (held_a, port) = proxy.session().await.unwrap();
    assert_eq!(port, a.port);
    register_tidb(&mut kv, &b.addr(), sb.port).await;
    let held_b = wait_for("a second TiDB to get sessions", SOON, || async {
        let (c, p) = proxy.session().await.ok()?;
        (p == b.port).then_some(c)
    })
    .await;

    // With A idle and B busy, A would be chosen; answering 500 on /status keeps it out.
    held_a.disconnect().await.unwrap();
    sa.set(500);
    wait_landing(&proxy, b.port, "a TiDB answering 500 to be skipped").await;
    for _ in 0..5 {
        assert_eq!(proxy.landing_port().await.unwrap(), b.port);
    }

    // A TiDB whose ttl key is gone gets no new sessions either, though it is the idle one.
    sa.set(200);
    let held_a = wait_for("A to recover", SOON, || async {
        let (c, p) = proxy.session().await.ok()?;
        (p == a.port).then_some(c)
    })
    .await;
    held_b.disconnect().await.unwrap();
    kv.delete(format!("/topology/tidb/{}/ttl", b.addr()), None)
        .await
        .unwrap();
    wait_landing(&proxy, a.port, "a TiDB without ttl to be dropped").await;
    for _ in 0..5 {
        assert_eq!(proxy.landing_port().await.unwrap(), a.port);
    }
    held_a.disconnect().await.unwrap();

    // Graceful exit removes our two keys and nothing else.
    assert!(proxy.terminate().await, "graceful exit");
    let left: Vec<String> = keys(&mut kv, "/topology/tiproxy/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, [other.to_string()]);
    assert_eq!(
        keys(&mut kv, &format!("/topology/tidb/{}/", a.addr()))
            .await
            .len(),
        2
    );
    assert!(proxy.log().contains("removed our registration"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_outage_keeps_the_last_known_tidbs_and_is_logged_once() {
    let mut etcd = Etcd::start().await;
    let a = Mariadb::start();
    let sa = StatusServer::start().await;
    register_tidb(&mut etcd.client().await, &a.addr(), sa.port).await;
    let proxy = Proxy::start(&format!("pd-addrs = \"{}\"", etcd.endpoint()), "").await;
    wait_landing(&proxy, a.port, "the TiDB to get sessions").await;

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
            a.port,
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
    assert_eq!(proxy.landing_port().await.unwrap(), a.port);
}
