//! The connection phase: the server greeting (HandshakeV10), the client's HandshakeResponse41
//! and SSLRequest, and COM_CHANGE_USER, each parsed and built so the proxy can sit between.

use super::buf::{put_lenenc_bytes, put_nul_str, Reader, Truncated};
use super::constants::{cap, cmd, ERR_HEADER};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Truncated(#[from] Truncated),
    #[error("unsupported protocol version {0} (only protocol 10 is spoken)")]
    Protocol(u8),
    #[error("the client does not speak protocol 4.1 (capabilities {0:#x})")]
    NotProtocol41(u32),
    #[error("unexpected packet {0:#04x} where a handshake was expected")]
    Unexpected(u8),
}

/// The greeting a server sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub connection_id: u32,
    pub scramble: Vec<u8>,
    pub capabilities: u32,
    pub collation: u8,
    pub status: u16,
    pub auth_plugin: String,
}

impl Greeting {
    pub fn parse(payload: &[u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(payload);
        let proto = r.u8()?;
        if proto == ERR_HEADER {
            return Err(HandshakeError::Unexpected(proto));
        }
        if proto != 10 {
            return Err(HandshakeError::Protocol(proto));
        }
        let server_version = String::from_utf8_lossy(r.nul_bytes()).into_owned();
        let connection_id = r.u32()?;
        let mut scramble = r.take(8)?.to_vec();
        r.u8()?;
        let cap_low = u32::from(r.u16()?);
        let mut g = Greeting {
            server_version,
            connection_id,
            scramble: Vec::new(),
            capabilities: cap_low,
            collation: 0,
            status: 0,
            auth_plugin: String::new(),
        };
        if r.is_empty() {
            g.scramble = scramble;
            return Ok(g);
        }
        g.collation = r.u8()?;
        g.status = r.u16()?;
        g.capabilities |= u32::from(r.u16()?) << 16;
        let auth_len = r.u8()? as usize;
        r.take(10)?;
        if g.capabilities & cap::SECURE_CONNECTION != 0 {
            let n = auth_len.saturating_sub(8).max(13).min(r.remaining());
            let part2 = r.take(n)?;
            // The second part carries a trailing NUL that is not part of the scramble.
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            scramble.extend_from_slice(part2);
        }
        if g.capabilities & cap::PLUGIN_AUTH != 0 {
            g.auth_plugin = String::from_utf8_lossy(r.nul_bytes()).into_owned();
        }
        g.scramble = scramble;
        Ok(g)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(10);
        put_nul_str(&mut out, self.server_version.as_bytes());
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let (p1, p2) = self.scramble.split_at(self.scramble.len().min(8));
        out.extend_from_slice(p1);
        out.push(0);
        out.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        out.push(self.collation);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        out.push(if self.capabilities & cap::PLUGIN_AUTH != 0 {
            (self.scramble.len() + 1) as u8
        } else {
            0
        });
        out.extend_from_slice(&[0; 10]);
        if self.capabilities & cap::SECURE_CONNECTION != 0 {
            out.extend_from_slice(p2);
            out.push(0);
        }
        if self.capabilities & cap::PLUGIN_AUTH != 0 {
            put_nul_str(&mut out, self.auth_plugin.as_bytes());
        }
        out
    }
}

/// The fixed 32-byte prefix shared by SSLRequest and HandshakeResponse41.
pub const RESPONSE_PREFIX_LEN: usize = 32;

/// True when a client's first reply is an SSLRequest (the prefix alone, SSL flag set).
pub fn is_ssl_request(payload: &[u8]) -> bool {
    payload.len() == RESPONSE_PREFIX_LEN
        && u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) & cap::SSL != 0
}

pub fn ssl_request(capabilities: u32, max_packet: u32, collation: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(RESPONSE_PREFIX_LEN);
    out.extend_from_slice(&(capabilities | cap::SSL).to_le_bytes());
    out.extend_from_slice(&max_packet.to_le_bytes());
    out.push(collation);
    out.extend_from_slice(&[0; 23]);
    out
}

/// The longest auth data a one-byte length can carry: 251 and up are length-encoding markers.
pub const MAX_ONE_BYTE_AUTH_LEN: usize = 250;

/// A client's HandshakeResponse41.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub collation: u8,
    pub user: Vec<u8>,
    pub auth_data: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub auth_plugin: Option<String>,
    pub attrs: Option<Vec<u8>>,
}

impl HandshakeResponse {
    pub fn parse(payload: &[u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(payload);
        let capabilities = r.u32()?;
        if capabilities & cap::PROTOCOL_41 == 0 {
            return Err(HandshakeError::NotProtocol41(capabilities));
        }
        let max_packet = r.u32()?;
        let collation = r.u8()?;
        r.take(23)?;
        let user = r.nul_bytes().to_vec();
        let auth_data = if capabilities & cap::PLUGIN_AUTH_LENENC_DATA != 0 {
            r.lenenc_bytes()?.to_vec()
        } else if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = r.u8()? as usize;
            r.take(n)?.to_vec()
        } else {
            r.nul_bytes().to_vec()
        };
        let database = if capabilities & cap::CONNECT_WITH_DB != 0 && !r.is_empty() {
            Some(r.nul_bytes().to_vec())
        } else {
            None
        };
        let auth_plugin = if capabilities & cap::PLUGIN_AUTH != 0 && !r.is_empty() {
            Some(String::from_utf8_lossy(r.nul_bytes()).into_owned())
        } else {
            None
        };
        let attrs = if capabilities & cap::CONNECT_ATTRS != 0 && !r.is_empty() {
            Some(r.lenenc_bytes()?.to_vec())
        } else {
            None
        };
        Ok(Self {
            capabilities,
            max_packet,
            collation,
            user,
            auth_data,
            database,
            auth_plugin,
            attrs,
        })
    }

    /// The response on the wire. Auth data of 251 bytes or more (a `tidb_session_token`)
    /// cannot take the one-byte length, so the length-encoded form is used and
    /// PLUGIN_AUTH_LENENC_CLIENT_DATA set, even when the server's greeting did not advertise
    /// it: TiDB does not advertise it yet honours it, and reads a one-byte length (the token's
    /// length mod 256) as a short password followed by a garbled plugin name.
    pub fn encode(&self) -> Vec<u8> {
        let mut caps = self.capabilities;
        if caps & cap::SECURE_CONNECTION != 0 && self.auth_data.len() > MAX_ONE_BYTE_AUTH_LEN {
            caps |= cap::PLUGIN_AUTH_LENENC_DATA;
        }
        let mut out = Vec::with_capacity(64 + self.user.len() + self.auth_data.len());
        out.extend_from_slice(&caps.to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.collation);
        out.extend_from_slice(&[0; 23]);
        put_nul_str(&mut out, &self.user);
        if caps & cap::PLUGIN_AUTH_LENENC_DATA != 0 {
            put_lenenc_bytes(&mut out, &self.auth_data);
        } else if caps & cap::SECURE_CONNECTION != 0 {
            out.push(self.auth_data.len() as u8);
            out.extend_from_slice(&self.auth_data);
        } else {
            put_nul_str(&mut out, &self.auth_data);
        }
        if caps & cap::CONNECT_WITH_DB != 0 {
            put_nul_str(&mut out, self.database.as_deref().unwrap_or_default());
        }
        if caps & cap::PLUGIN_AUTH != 0 {
            put_nul_str(
                &mut out,
                self.auth_plugin.as_deref().unwrap_or_default().as_bytes(),
            );
        }
        if caps & cap::CONNECT_ATTRS != 0 {
            put_lenenc_bytes(&mut out, self.attrs.as_deref().unwrap_or_default());
        }
        out
    }
}

/// COM_CHANGE_USER, parsed so the proxy can drop auth data computed against its own scramble.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeUser {
    pub user: Vec<u8>,
    pub auth_data: Vec<u8>,
    pub database: Vec<u8>,
    pub collation: Option<u16>,
    pub auth_plugin: Option<String>,
    pub attrs: Option<Vec<u8>>,
}

impl ChangeUser {
    pub fn parse(payload: &[u8], capabilities: u32) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(payload);
        let c = r.u8()?;
        if c != cmd::CHANGE_USER {
            return Err(HandshakeError::Unexpected(c));
        }
        let user = r.nul_bytes().to_vec();
        let auth_data = if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = r.u8()? as usize;
            r.take(n)?.to_vec()
        } else {
            r.nul_bytes().to_vec()
        };
        let database = r.nul_bytes().to_vec();
        let mut cu = ChangeUser {
            user,
            auth_data,
            database,
            ..Default::default()
        };
        if r.remaining() >= 2 {
            cu.collation = Some(r.u16()?);
            if capabilities & cap::PLUGIN_AUTH != 0 && !r.is_empty() {
                cu.auth_plugin = Some(String::from_utf8_lossy(r.nul_bytes()).into_owned());
            }
            if capabilities & cap::CONNECT_ATTRS != 0 && !r.is_empty() {
                cu.attrs = Some(r.lenenc_bytes()?.to_vec());
            }
        }
        Ok(cu)
    }

    pub fn encode(&self, capabilities: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.user.len());
        out.push(cmd::CHANGE_USER);
        put_nul_str(&mut out, &self.user);
        if capabilities & cap::SECURE_CONNECTION != 0 {
            out.push(self.auth_data.len() as u8);
            out.extend_from_slice(&self.auth_data);
        } else {
            put_nul_str(&mut out, &self.auth_data);
        }
        put_nul_str(&mut out, &self.database);
        if let Some(c) = self.collation {
            out.extend_from_slice(&c.to_le_bytes());
            if capabilities & cap::PLUGIN_AUTH != 0 {
                put_nul_str(
                    &mut out,
                    self.auth_plugin.as_deref().unwrap_or_default().as_bytes(),
                );
            }
            if capabilities & cap::CONNECT_ATTRS != 0 {
                if let Some(a) = &self.attrs {
                    put_lenenc_bytes(&mut out, a);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Greeting {
        Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 42,
            scramble: (1..=20).collect(),
            capabilities: cap::PROXY_DEFAULT | cap::SSL,
            collation: 45,
            status: 2,
            auth_plugin: "mysql_native_password".into(),
        }
    }

    #[test]
    fn greeting_round_trip() {
        let g = greeting();
        assert_eq!(Greeting::parse(&g.encode()).unwrap(), g);
    }

    #[test]
    fn greeting_rejects_err_and_truncation() {
        assert!(matches!(
            Greeting::parse(&[0xff, 0x10, 0x04]),
            Err(HandshakeError::Unexpected(0xff))
        ));
        let enc = greeting().encode();
        for n in 1..20 {
            assert!(Greeting::parse(&enc[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn response_round_trip_with_every_optional_part() {
        let resp = HandshakeResponse {
            capabilities: cap::PROXY_DEFAULT,
            max_packet: 1 << 24,
            collation: 45,
            user: b"app".to_vec(),
            auth_data: vec![7; 20],
            database: Some(b"test".to_vec()),
            auth_plugin: Some("mysql_native_password".into()),
            attrs: Some(vec![3, b'_', b'o', b's', 1, b'x']),
        };
        let enc = resp.encode();
        assert!(!is_ssl_request(&enc));
        assert_eq!(HandshakeResponse::parse(&enc).unwrap(), resp);
    }

    /// TiDB's greeting does not advertise PLUGIN_AUTH_LENENC_CLIENT_DATA; a 476-byte session
    /// token written after a one-byte length (0xdc) makes TiDB answer with an auth switch.
    #[test]
    fn long_auth_data_goes_length_encoded_even_unadvertised() {
        let tidb_caps = 0x051b_a6af & !cap::PLUGIN_AUTH_LENENC_DATA;
        let token = vec![b'x'; 476];
        let resp = HandshakeResponse {
            capabilities: (cap::PROXY_DEFAULT & tidb_caps) | cap::SECURE_CONNECTION,
            max_packet: 1 << 24,
            collation: 46,
            user: b"app".to_vec(),
            auth_data: token.clone(),
            database: None,
            auth_plugin: Some("tidb_session_token".into()),
            attrs: None,
        };
        assert_eq!(resp.capabilities & cap::PLUGIN_AUTH_LENENC_DATA, 0);
        let enc = resp.encode();
        let caps = u32::from_le_bytes([enc[0], enc[1], enc[2], enc[3]]);
        assert_ne!(caps & cap::PLUGIN_AUTH_LENENC_DATA, 0, "flag not set");
        let at = RESPONSE_PREFIX_LEN + b"app\0".len();
        assert_eq!(
            &enc[at..at + 3],
            &[0xfc, 0xdc, 0x01],
            "not a 3-byte lenenc length"
        );
        assert_ne!(enc[at], 0xdc, "the token went out with a one-byte length");
        let back = HandshakeResponse::parse(&enc).unwrap();
        assert_eq!(back.auth_data, token);
        assert_eq!(back.auth_plugin.as_deref(), Some("tidb_session_token"));
        // Short auth data keeps the one-byte form a server that did not advertise the flag
        // expects.
        let short = HandshakeResponse {
            auth_data: vec![7; 20],
            ..resp
        };
        let enc = short.encode();
        assert_eq!(enc[at], 20);
        assert_eq!(
            u32::from_le_bytes([enc[0], enc[1], enc[2], enc[3]]) & cap::PLUGIN_AUTH_LENENC_DATA,
            0
        );
    }

    #[test]
    fn response_garbage_is_an_error_not_a_panic() {
        assert!(HandshakeResponse::parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(HandshakeResponse::parse(&[0xff; 40]).is_err());
        assert!(HandshakeResponse::parse(&[]).is_err());
    }

    #[test]
    fn ssl_request_detected() {
        let req = ssl_request(cap::PROXY_DEFAULT, 1 << 24, 45);
        assert!(is_ssl_request(&req));
    }

    #[test]
    fn change_user_round_trip() {
        let caps = cap::PROXY_DEFAULT;
        let cu = ChangeUser {
            user: b"bob".to_vec(),
            auth_data: vec![1; 20],
            database: b"db".to_vec(),
            collation: Some(45),
            auth_plugin: Some("mysql_native_password".into()),
            attrs: Some(vec![0]),
        };
        assert_eq!(ChangeUser::parse(&cu.encode(caps), caps).unwrap(), cu);
    }
}
