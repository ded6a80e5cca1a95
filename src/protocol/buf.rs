//! Length-encoded integers and strings, NUL-terminated strings: a bounds-checked reader and
//! append helpers used by every packet codec.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("packet ends early: wanted {wanted} more bytes at offset {at}")]
pub struct Truncated {
    pub at: usize,
    pub wanted: usize,
}

/// A cursor over a packet payload that never panics on short input.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.remaining() < n {
            return Err(Truncated {
                at: self.pos,
                wanted: n - self.remaining(),
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-encoded integer; `None` for the NULL marker 0xfb.
    pub fn lenenc_int(&mut self) -> Result<Option<u64>, Truncated> {
        let first = self.u8()?;
        Ok(match first {
            0xfb => None,
            0xfc => Some(u64::from(self.u16()?)),
            0xfd => {
                let b = self.take(3)?;
                Some(u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16)
            }
            0xfe => {
                let b = self.take(8)?;
                Some(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            v => Some(u64::from(v)),
        })
    }

    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.lenenc_int()?.unwrap_or(0);
        let n = usize::try_from(n).map_err(|_| Truncated {
            at: self.pos,
            wanted: usize::MAX,
        })?;
        self.take(n)
    }

    /// Bytes up to a NUL (consumed, not returned); the rest of the packet when there is none.
    pub fn nul_bytes(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                &rest[..i]
            }
            None => {
                self.pos = self.data.len();
                rest
            }
        }
    }
}

pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xfa => out.push(v as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

pub fn put_lenenc_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_lenenc_int(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn put_nul_str(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_round_trips_at_every_width() {
        for v in [
            0u64,
            250,
            251,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.lenenc_int().unwrap(), Some(v), "value {v}");
            assert!(r.is_empty());
        }
    }

    #[test]
    fn null_marker_and_truncation() {
        assert_eq!(Reader::new(&[0xfb]).lenenc_int().unwrap(), None);
        assert!(Reader::new(&[0xfc, 1]).lenenc_int().is_err());
        assert!(Reader::new(&[0xfe, 1, 2, 3]).lenenc_int().is_err());
        let mut r = Reader::new(&[5, b'a']);
        assert!(r.lenenc_bytes().is_err());
    }

    #[test]
    fn nul_strings() {
        let mut r = Reader::new(b"root\0db");
        assert_eq!(r.nul_bytes(), b"root");
        assert_eq!(r.nul_bytes(), b"db");
        assert!(r.is_empty());
    }
}
