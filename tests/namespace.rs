//! Namespaces end to end with two real MariaDB servers: users of a namespace put through the
//! API land on its backend and everyone else on the default group; the namespace is written
//! into the config file and survives a restart; writes without credentials are refused; and
//! tiproxyctl's namespace commands in TiProxy's shapes work.

mod common;

use common::cli::{run, CmdOut};
use common::http::{basic, http};
use common::mariadb::{MariaDb, APP_PASS, APP_USER};
use common::proxy::{Proxy, ProxyConfig};
use common::raw::RawConn;
use std::process::Command;
use std::time::Duration;

const ADMIN: (&str, &str) = ("admin", "ns-admin-pw");
const TENANT: (&str, &str) = ("tenant", "tenant-pw");

fn backend_port(proxy: &Proxy, user: (&str, &str)) -> Result<u16, String> {
    let mut c = RawConn::connect(&proxy.addr());
    c.handshake(user.0, user.1, Some("test"))
        .map_err(|e| format!("{e:?}"))?;
    c.query_value("SELECT @@port")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| "no @@port".into())
}

fn ctl(proxy: &Proxy, args: &[&str]) -> CmdOut {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiproxyctl"));
    cmd.args(["--host", "127.0.0.1", "--port"])
        .arg(proxy.api_port().to_string())
        .args(["--user", ADMIN.0, "--password", ADMIN.1])
        .args(args);
    run(&mut cmd, Duration::from_secs(20))
}

#[test]
fn namespace_users_route_to_their_backends_and_the_namespace_persists() {
    let dbs = MariaDb::start_many(2);
    for db in &dbs {
        db.sql(&format!(
            "CREATE USER '{}'@'%' IDENTIFIED BY '{}'; GRANT ALL ON *.* TO '{}'@'%';",
            TENANT.0, TENANT.1, TENANT.0
        ));
    }
    let (default_port, tenant_port) = (dbs[0].port(), dbs[1].port());
    let mut cfg = ProxyConfig::new(vec![dbs[0].addr()]);
    cfg.extra_api = format!("user = {:?}\npassword = {:?}\n", ADMIN.0, ADMIN.1);
    let mut proxy = Proxy::start(&cfg);
    let api = proxy.api_port();
    let auth = [basic(ADMIN.0, ADMIN.1)];
    let body = format!(
        r#"{{"namespace":"tenants","frontend":{{"user":"{}","security":{{}}}},"backend":{{"instances":[{:?}],"security":{{}}}}}}"#,
        TENANT.0,
        dbs[1].addr()
    );

    // Without credentials: refused, nothing changes.
    let r = http(api, "PUT", "/api/admin/namespace/tenants", &[], &body);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http(api, "GET", "/api/admin/namespace", &[], "");
    assert_eq!(r.status, 401, "listing names users: {}", r.body);
    assert_eq!(backend_port(&proxy, TENANT), Ok(default_port));

    let r = http(api, "PUT", "/api/admin/namespace/tenants", &auth, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        api,
        "POST",
        "/api/admin/namespace/commit?namespace=tenants",
        &auth,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(api, "GET", "/api/admin/namespace/tenants", &auth, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&dbs[1].addr()), "{}", r.body);
    let r = http(api, "GET", "/api/admin/namespace/nope", &auth, "");
    assert_eq!(r.status, 404, "{}", r.body);
    // A user in two namespaces is refused, naming the user.
    let clash = body.replace("\"tenants\"", "\"others\"");
    let r = http(api, "PUT", "/api/admin/namespace/others", &auth, &clash);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains(TENANT.0), "{}", r.body);

    // Several sessions each, so "fewest sessions" alone would have spread them.
    let check = |proxy: &Proxy, when: &str| {
        for i in 0..3 {
            assert_eq!(
                backend_port(proxy, TENANT),
                Ok(tenant_port),
                "{when}: tenant login #{i}\n{}",
                proxy.log()
            );
            assert_eq!(
                backend_port(proxy, (APP_USER, APP_PASS)),
                Ok(default_port),
                "{when}: default login #{i}"
            );
        }
    };
    check(&proxy, "after the put");
    let file = std::fs::read_to_string(proxy.config_path()).expect("config file");
    assert!(file.contains("[[namespace]]"), "{file}");

    proxy.restart();
    check(&proxy, "after a restart");

    let list = ctl(&proxy, &["namespace", "list"]);
    assert!(list.ok(), "{list:?}");
    assert!(list.stdout.contains("[tenants"), "{}", list.stdout);
    let get = ctl(&proxy, &["namespace", "get", "tenants"]);
    assert!(
        get.ok() && get.stdout.contains("namespace = \"tenants\""),
        "{get:?}"
    );

    // tiproxyctl put --ns FILE (TiProxy's TOML) moves the tenant back to the first backend;
    // del removes the namespace, and the tenant is in the default group again.
    let ns_file = proxy.dir().join("tenants.toml");
    std::fs::write(
        &ns_file,
        format!(
            "namespace = \"tenants\"\n[frontend]\nuser = \"{}\"\n[backend]\ninstances = [{:?}]\n",
            TENANT.0,
            dbs[0].addr()
        ),
    )
    .unwrap();
    let put = ctl(
        &proxy,
        &["namespace", "put", "--ns", &ns_file.display().to_string()],
    );
    assert!(put.ok(), "{put:?}");
    assert_eq!(backend_port(&proxy, TENANT), Ok(default_port));
    let commit = ctl(&proxy, &["namespace", "commit", "tenants"]);
    assert!(commit.ok(), "{commit:?}");
    let del = ctl(&proxy, &["namespace", "del", "tenants"]);
    assert!(del.ok(), "{del:?}");
    let r = http(api, "GET", "/api/admin/namespace", &auth, "");
    assert_eq!(r.body.trim(), "[]", "{}", r.body);
    let file = std::fs::read_to_string(proxy.config_path()).expect("config file");
    assert!(!file.contains("[[namespace]]"), "{file}");
    eprintln!(
        "namespace: tenant on :{tenant_port}, default on :{default_port}; persisted across a restart; 401 without credentials"
    );
}
