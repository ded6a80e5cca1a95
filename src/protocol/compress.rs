//! The compressed protocol (CLIENT_COMPRESS): zlib frames around the packet stream, one
//! 7-byte header each, with their own sequence numbers.

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io;

pub const HEADER_LEN: usize = 7;
/// Payloads shorter than this are sent uncompressed, as MySQL does.
const MIN_COMPRESS_LEN: usize = 50;
/// Largest uncompressed chunk put in one frame.
const MAX_FRAME: usize = 0xff_ffff;
/// Decoding stops once this much is produced, leaving later frames compressed in `raw`: a
/// frame of ~16 KiB can inflate to 16 MiB, so decoding a whole read's worth of such frames
/// at once would let one client claim gigabytes.
const DECODE_BATCH: usize = 64 * 1024;

pub struct CompressState {
    /// Compressed bytes read from the wire, not yet decoded.
    pub raw: BytesMut,
    next_seq: u8,
    deflate: Compress,
    inflate: Decompress,
}

impl Default for CompressState {
    fn default() -> Self {
        Self::new()
    }
}

impl CompressState {
    /// The sequence id the next encoded frame will carry.
    pub fn next_seq(&self) -> u8 {
        self.next_seq
    }

    pub fn new() -> Self {
        Self {
            raw: BytesMut::with_capacity(4096),
            next_seq: 0,
            deflate: Compress::new(Compression::fast(), true),
            inflate: Decompress::new(true),
        }
    }

    /// Decodes complete frames from `raw` into `out` until `DECODE_BATCH` bytes are produced
    /// (at least one frame, so progress is certain); returns the bytes appended. Call again
    /// before reading more: complete frames may still be waiting in `raw`.
    pub fn decode_frames(&mut self, out: &mut BytesMut) -> io::Result<usize> {
        let mut produced = 0;
        while self.raw.len() >= HEADER_LEN && produced < DECODE_BATCH {
            let h = &self.raw[..HEADER_LEN];
            let clen = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
            let seq = h[3];
            let ulen = usize::from(h[4]) | usize::from(h[5]) << 8 | usize::from(h[6]) << 16;
            if self.raw.len() < HEADER_LEN + clen {
                self.raw.reserve(HEADER_LEN + clen - self.raw.len());
                break;
            }
            self.next_seq = seq.wrapping_add(1);
            let body = &self.raw[HEADER_LEN..HEADER_LEN + clen];
            if ulen == 0 {
                out.extend_from_slice(body);
                produced += clen;
            } else {
                let start = out.len();
                out.resize(start + ulen, 0);
                self.inflate.reset(true);
                let status = self
                    .inflate
                    .decompress(body, &mut out[start..], FlushDecompress::Finish)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if status != Status::StreamEnd || self.inflate.total_out() as usize != ulen {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "compressed frame does not inflate to its stated length",
                    ));
                }
                produced += ulen;
            }
            self.raw.advance(HEADER_LEN + clen);
        }
        Ok(produced)
    }

    /// Encodes `data` as one or more frames appended to `out`.
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        for chunk in data.chunks(MAX_FRAME) {
            let start = out.len();
            out.extend_from_slice(&[0; HEADER_LEN]);
            let (clen, ulen) = if chunk.len() < MIN_COMPRESS_LEN {
                out.extend_from_slice(chunk);
                (chunk.len(), 0)
            } else {
                self.deflate.reset();
                out.reserve(chunk.len() + 64);
                loop {
                    let before_in = self.deflate.total_in() as usize;
                    let status = self
                        .deflate
                        .compress_vec(&chunk[before_in..], out, FlushCompress::Finish)
                        .map_err(io::Error::other)?;
                    if status == Status::StreamEnd {
                        break;
                    }
                    out.reserve(chunk.len() / 2 + 64);
                }
                (out.len() - start - HEADER_LEN, chunk.len())
            };
            let h = &mut out[start..start + HEADER_LEN];
            h[..3].copy_from_slice(&(clen as u32).to_le_bytes()[..3]);
            h[3] = self.next_seq;
            h[4..7].copy_from_slice(&(ulen as u32).to_le_bytes()[..3]);
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_small_and_large() {
        let mut tx = CompressState::new();
        let mut rx = CompressState::new();
        let small = b"tiny".to_vec();
        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let mut wire = Vec::new();
        tx.encode(&small, &mut wire).unwrap();
        tx.encode(&large, &mut wire).unwrap();
        assert!(wire.len() < large.len(), "repetitive data compresses");
        // feed byte ranges in pieces to exercise partial frames
        let mut out = BytesMut::new();
        for piece in wire.chunks(1000) {
            rx.raw.extend_from_slice(piece);
            rx.decode_frames(&mut out).unwrap();
        }
        let mut expected = small.clone();
        expected.extend_from_slice(&large);
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn inflation_is_decoded_one_batch_at_a_time() {
        // Four frames of 1 MiB of zeros, about 20 KiB on the wire together.
        let mut tx = CompressState::new();
        let mut wire = Vec::new();
        for _ in 0..4 {
            tx.encode(&vec![0u8; 1 << 20], &mut wire).unwrap();
        }
        assert!(wire.len() < 32 * 1024, "{}", wire.len());
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&wire);
        let mut out = BytesMut::new();
        for _ in 0..4 {
            out.clear();
            assert_eq!(rx.decode_frames(&mut out).unwrap(), 1 << 20);
        }
        assert_eq!(rx.decode_frames(&mut out).unwrap(), 0);
        assert!(rx.raw.is_empty());
    }

    #[test]
    fn corrupt_frame_is_an_error() {
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&[3, 0, 0, 0, 10, 0, 0, 1, 2, 3]);
        let mut out = BytesMut::new();
        assert!(rx.decode_frames(&mut out).is_err());
    }

    #[test]
    fn write_sequence_follows_last_read_frame() {
        let mut st = CompressState::new();
        st.raw.extend_from_slice(&[1, 0, 0, 4, 0, 0, 0, b'x']);
        let mut out = BytesMut::new();
        st.decode_frames(&mut out).unwrap();
        let mut wire = Vec::new();
        st.encode(b"y", &mut wire).unwrap();
        assert_eq!(wire[3], 5);
    }
}
