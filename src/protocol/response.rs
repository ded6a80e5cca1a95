//! OK, ERR and EOF packets: reading the status flags a relay needs, and building ERR packets.

use super::buf::Reader;
use super::constants::{EOF_HEADER, ERR_HEADER, MAX_PAYLOAD, OK_HEADER};

/// Status flags of an OK packet (header 0x00, or 0xfe when it replaces EOF).
pub fn ok_status(payload: &[u8]) -> Option<u16> {
    let mut r = Reader::new(payload);
    let h = r.u8().ok()?;
    if h != OK_HEADER && h != EOF_HEADER {
        return None;
    }
    r.lenenc_int().ok()?;
    r.lenenc_int().ok()?;
    r.u16().ok()
}

/// Status flags of a classic EOF packet: 0xfe, warnings(2), status(2).
pub fn eof_status(payload: &[u8]) -> Option<u16> {
    if payload.len() >= 5 && payload[0] == EOF_HEADER {
        Some(u16::from_le_bytes([payload[3], payload[4]]))
    } else {
        None
    }
}

/// Status of the packet that ends a result set or row batch.
pub fn terminator_status(payload: &[u8], deprecate_eof: bool) -> Option<u16> {
    if deprecate_eof {
        ok_status(payload)
    } else {
        eof_status(payload)
    }
}

/// A classic EOF packet is 0xfe and shorter than 9 bytes (a row can also start with 0xfe).
pub fn is_eof(first: u8, len: usize) -> bool {
    first == EOF_HEADER && len < 9
}

/// The OK packet that ends a result set when CLIENT_DEPRECATE_EOF is on: 0xfe and short of
/// a full-size packet (a text row starting with 0xfe is always at least 16 MiB).
pub fn is_result_ok(first: u8, len: usize) -> bool {
    first == EOF_HEADER && len < MAX_PAYLOAD
}

/// The end of a result set under the negotiated capability.
pub fn is_terminator(first: u8, len: usize, deprecate_eof: bool) -> bool {
    if deprecate_eof {
        is_result_ok(first, len)
    } else {
        is_eof(first, len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub state: String,
    pub message: String,
}

impl ErrPacket {
    pub fn new(code: u16, state: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            state: state.to_owned(),
            message: message.into(),
        }
    }

    pub fn parse(payload: &[u8]) -> Option<Self> {
        let mut r = Reader::new(payload);
        if r.u8().ok()? != ERR_HEADER {
            return None;
        }
        let code = r.u16().ok()?;
        let mut state = String::new();
        if r.remaining() >= 6 && payload[r.pos()] == b'#' {
            r.take(1).ok()?;
            state = String::from_utf8_lossy(r.take(5).ok()?).into_owned();
        }
        let message = String::from_utf8_lossy(r.rest()).into_owned();
        Some(Self {
            code,
            state,
            message,
        })
    }

    /// The payload (without the 4-byte header) in the protocol-4.1 form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(ERR_HEADER);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        let mut state = [b'H', b'Y', b'0', b'0', b'0'];
        for (d, s) in state.iter_mut().zip(self.state.bytes()) {
            *d = s;
        }
        out.extend_from_slice(&state);
        out.extend_from_slice(self.message.as_bytes());
        out
    }
}

impl std::fmt::Display for ErrPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERROR {} ({}): {}", self.code, self.state, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_status_reads_flags_after_lenenc_fields() {
        // affected rows 0xfc 0x2c 0x01 (300), insert id 5, status 0x0003, warnings 0
        let ok = [0x00, 0xfc, 0x2c, 0x01, 0x05, 0x03, 0x00, 0x00, 0x00];
        assert_eq!(ok_status(&ok), Some(3));
        assert_eq!(ok_status(&[0x00, 0x00]), None);
        assert_eq!(ok_status(&[0xff, 0, 0, 0, 0]), None);
    }

    #[test]
    fn eof_and_terminators() {
        let eof = [0xfe, 0x00, 0x00, 0x22, 0x00];
        assert_eq!(eof_status(&eof), Some(0x22));
        assert!(is_eof(0xfe, 5));
        assert!(!is_eof(0xfe, 9));
        assert!(is_result_ok(0xfe, 7));
        assert!(!is_result_ok(0xfe, MAX_PAYLOAD));
        assert!(!is_terminator(0x03, 5, false));
    }

    #[test]
    fn err_round_trip() {
        let e = ErrPacket::new(1040, "08004", "Too many connections");
        let p = ErrPacket::parse(&e.encode()).unwrap();
        assert_eq!(p, e);
        assert_eq!(p.to_string(), "ERROR 1040 (08004): Too many connections");
        // pre-4.1 form without a SQLSTATE marker
        let old = ErrPacket::parse(&[0xff, 0x15, 0x04, b'n', b'o']).unwrap();
        assert_eq!(old.code, 1045);
        assert_eq!(old.message, "no");
    }
}
