//! The service account: the proxy logs in with it to read a user's stored native-password
//! hash, from which (with the client's observed exchange) it derives how to log in as that
//! user on another backend.

use super::credential::{parse_stored_hash, recover_stage1, stage1_from_password, Proof};
use super::gate::StoredHashes;
use super::sql::{query, quote, SqlError};
use crate::balance::Backend;
use crate::config::ServiceAccount;
use crate::protocol::constants::{cap, cmd, DEFAULT_COLLATION};
use crate::protocol::handshake::HandshakeResponse;
use crate::proxy::backend_conn::{dial, finish_auth, AuthAnswer, AuthError, DialError, Identity};
use crate::proxy::context::ProxyContext;
use std::sync::Arc;
use std::time::Duration;

const SERVICE_CAPABILITIES: u32 = cap::LONG_PASSWORD
    | cap::LONG_FLAG
    | cap::PROTOCOL_41
    | cap::TRANSACTIONS
    | cap::SECURE_CONNECTION
    | cap::MULTI_RESULTS
    | cap::PLUGIN_AUTH
    | cap::PLUGIN_AUTH_LENENC_DATA
    | cap::DEPRECATE_EOF;

/// How to log in as the session's user elsewhere. `Native` holds SHA1(password), which logs in
/// as the user anywhere: not `Copy`, so no stray copy outlives the session, and wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub enum Login {
    Native([u8; 20]),
    EmptyPassword,
}

/// Why the proxy cannot log a moving session in on another MySQL/MariaDB backend.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(
        "the user logged in with {0}, which the proxy cannot replay; only \
         mysql_native_password sessions can move between MySQL/MariaDB backends"
    )]
    Plugin(String),
    #[error("no [proxy.service-account] is configured, so MySQL/MariaDB sessions cannot be moved")]
    NoServiceAccount,
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("service account login failed: {0}")]
    ServiceLogin(#[source] AuthError),
    #[error("reading mysql.user with the service account failed: {0}")]
    Lookup(#[source] SqlError),
    #[error("no stored mysql_native_password hash of user {0} matches the session's login")]
    NoMatch(String),
    #[error("the service account lookup timed out")]
    Timeout,
}

impl Login {
    fn wipe(&mut self) {
        if let Login::Native(s1) = self {
            zeroize::Zeroize::zeroize(s1);
        }
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Never prints the hash, should a session be logged whole.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Native(_) => f.write_str("Native(<secret>)"),
            Login::EmptyPassword => f.write_str("EmptyPassword"),
        }
    }
}

/// Works out the login for `user` from what the proxy observed, reading the stored hash
/// through the service account on `via` (or taking the one a move of the same user read a
/// moment ago, when it fits this session's exchange).
pub async fn login_for(
    ctx: &ProxyContext,
    via: &Arc<Backend>,
    user: &[u8],
    proof: &Proof,
    account: &ServiceAccount,
    timeout: Duration,
) -> Result<Login, LoginError> {
    let (scramble, reply) = match proof {
        Proof::EmptyPassword => return Ok(Login::EmptyPassword),
        Proof::Other(plugin) => return Err(LoginError::Plugin(plugin.clone())),
        Proof::Native { scramble, reply } => (scramble, reply),
    };
    if account.user.is_empty() {
        return Err(LoginError::NoServiceAccount);
    }
    let recover = |hashes: &StoredHashes| {
        hashes
            .iter()
            .find_map(|h| recover_stage1(scramble, reply, h).map(zeroize::Zeroizing::new))
    };
    let hashes = ctx
        .move_gate
        .stored_hashes(
            &via.addr,
            user,
            |h| recover(h).is_some(),
            || async {
                crate::timer::timeout(timeout, read_stored_hashes(ctx, via, user, account))
                    .await
                    .unwrap_or(Err(LoginError::Timeout))
            },
        )
        .await?;
    match recover(&hashes) {
        Some(mut s1) => Ok(Login::Native(std::mem::take(&mut *s1))),
        None => Err(LoginError::NoMatch(
            String::from_utf8_lossy(user).into_owned(),
        )),
    }
}

/// Logs in with the service account on `via` and reads the user's native-password hashes.
async fn read_stored_hashes(
    ctx: &ProxyContext,
    via: &Arc<Backend>,
    user: &[u8],
    account: &ServiceAccount,
) -> Result<StoredHashes, LoginError> {
    // A plain client: NO_SCHEMA or IGNORE_SPACE would change how `mysql.user` parses.
    let identity = HandshakeResponse {
        capabilities: SERVICE_CAPABILITIES,
        max_packet: 1 << 24,
        collation: DEFAULT_COLLATION,
        user: account.user.as_bytes().to_vec(),
        ..Default::default()
    };
    // Wiped when this login is done, on every path out.
    let stage1 = zeroize::Zeroizing::new(stage1_from_password(account.password.as_bytes()));
    let answer = if account.password.is_empty() {
        AuthAnswer::EmptyPassword
    } else {
        AuthAnswer::Native(&stage1)
    };
    let who = Identity {
        response: &identity,
        capabilities: identity.capabilities,
    };
    let settings = ctx.settings();
    let mut d = dial(via, who, answer, ctx, 4096, settings.require_backend_tls).await?;
    finish_auth(&mut d.conn, answer)
        .await
        .map_err(LoginError::ServiceLogin)?;
    let deprecate_eof = d.capabilities & cap::DEPRECATE_EOF != 0;
    let sql = format!(
        "SELECT authentication_string FROM mysql.user WHERE user = {}",
        quote(user)
    );
    let rows = query(&mut d.conn, &sql, deprecate_eof)
        .await
        .map_err(LoginError::Lookup)?;
    let _ = d.conn.write_packet(0, &[cmd::QUIT]).await;
    let mut hashes = StoredHashes::new();
    for r in rows {
        // The stored hash is a credential too: wiped on every path.
        let stored = zeroize::Zeroizing::new(
            String::from_utf8_lossy(r.first().cloned().flatten().as_deref().unwrap_or_default())
                .to_string(),
        );
        if let Some(stage2) = parse_stored_hash(&stored) {
            hashes.push(zeroize::Zeroizing::new(stage2));
        }
    }
    Ok(hashes)
}

#[cfg(test)]
mod login_tests {
    use super::Login;

    #[test]
    fn the_hash_is_wiped_and_never_printed() {
        let mut l = Login::Native([0xab; 20]);
        assert_eq!(format!("{l:?}"), "Native(<secret>)");
        l.wipe();
        assert!(matches!(l, Login::Native(s) if s == [0; 20]));
    }
}
