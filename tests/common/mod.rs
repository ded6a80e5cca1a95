//! The one test harness: private MariaDB servers, etcd and PD topology, the proxy as a process
//! or in process, clients, raw HTTP, the TiUP package, and scripted backends.
// Every test binary compiles this module but uses only part of it; the unused rest is not dead code.
#![allow(dead_code)]

pub mod bystander;
pub mod cli;
pub mod client;
pub mod go;
pub mod http;
pub mod mariadb;
pub mod net;
pub mod ops;
pub mod pd;
pub mod procfs;
pub mod proxy;
pub mod raw;
pub mod scripted;
pub mod security;
pub mod tidb;
pub mod tidb_metrics;
pub mod tiup;
pub mod tls;
pub mod tools;
pub mod wire;

/// One MariaDB and a proxy in front of it: the setup most tests need.
pub fn db_and_proxy() -> (mariadb::MariaDb, proxy::Proxy) {
    let db = mariadb::MariaDb::start();
    let proxy = proxy::Proxy::start(&proxy::ProxyConfig::new(vec![db.addr()]));
    (db, proxy)
}
