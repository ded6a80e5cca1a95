//! mysql_async options that keep every byte on the proxy's TCP port.

use mysql_async::{Opts, OptsBuilder, SslOpts};

/// Options for `user` at 127.0.0.1:`port`, database `test`.
///
/// `prefer_socket(false)` matters: by default mysql_async asks the server for `@@socket` and
/// reconnects over it, which would silently bypass the proxy. Fixing max_allowed_packet and
/// wait_timeout spares the settings query, so scripted backends only see the test's queries.
pub fn builder(port: u16, user: &str, pass: &str) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(pass))
        .db_name(Some("test"))
        .prefer_socket(false)
        .max_allowed_packet(Some(64 * 1024 * 1024))
        .wait_timeout(Some(28_800))
}

pub fn opts(port: u16, user: &str, pass: &str) -> Opts {
    builder(port, user, pass).into()
}

/// TLS that trusts any certificate: the tests use throwaway self-signed ones.
pub fn insecure_tls() -> SslOpts {
    SslOpts::default()
        .with_danger_accept_invalid_certs(true)
        .with_danger_skip_domain_validation(true)
}

/// Connects as `app`, panicking with the driver's error if that fails.
pub async fn app_conn(port: u16) -> mysql_async::Conn {
    mysql_async::Conn::new(opts(
        port,
        super::mariadb::APP_USER,
        super::mariadb::APP_PASS,
    ))
    .await
    .unwrap_or_else(|e| panic!("connect as app to 127.0.0.1:{port}: {e}"))
}
