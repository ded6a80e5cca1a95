//! The part of a client's handshake response a session keeps for logging in elsewhere, in as
//! few bytes as an idle session can hold it.

use crate::protocol::handshake::HandshakeResponse;

/// What a login on another backend sends again: the client's capabilities, packet limit,
/// collation, user name and connection attributes. The auth answer and plugin are not kept (a
/// move answers with a proof of its own) and the database is replayed as session state, so a
/// session holds 48 bytes and two exact allocations instead of a whole `HandshakeResponse`.
#[derive(Debug)]
pub(crate) struct KeptIdentity {
    capabilities: u32,
    max_packet: u32,
    collation: u8,
    /// As the client sent it: a user name need not be UTF-8.
    pub(crate) user: Box<[u8]>,
    attrs: Option<Box<[u8]>>,
}

impl KeptIdentity {
    pub(crate) fn keep(response: HandshakeResponse) -> KeptIdentity {
        KeptIdentity {
            capabilities: response.capabilities,
            max_packet: response.max_packet,
            collation: response.collation,
            user: response.user.into_boxed_slice(),
            attrs: response.attrs.map(Vec::into_boxed_slice),
        }
    }

    /// The response to log in with elsewhere: no database, auth answer or plugin.
    pub(crate) fn response(&self) -> HandshakeResponse {
        HandshakeResponse {
            capabilities: self.capabilities,
            max_packet: self.max_packet,
            collation: self.collation,
            user: self.user.to_vec(),
            auth_data: Vec::new(),
            database: None,
            auth_plugin: None,
            attrs: self.attrs.as_deref().map(<[u8]>::to_vec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_identity_logs_in_as_the_client_without_its_answer_or_database() {
        let sent = HandshakeResponse {
            capabilities: 0x00af_a685,
            max_packet: 16 << 20,
            collation: 45,
            user: b"app\xff".to_vec(),
            auth_data: vec![1; 20],
            database: Some(b"shop".to_vec()),
            auth_plugin: Some("mysql_native_password".into()),
            attrs: Some(b"\x0c_client_name\x07libmysql".to_vec()),
        };
        let again = KeptIdentity::keep(sent.clone()).response();
        assert_eq!(
            again,
            HandshakeResponse {
                auth_data: Vec::new(),
                database: None,
                auth_plugin: None,
                ..sent
            }
        );
    }
}
