//! The compressed protocol (CLIENT_COMPRESS): zlib frames around the packet stream, one
//! 7-byte header each, with their own sequence numbers. Frames are cut where a server cuts
//! them: between packets, and a packet too large to hold goes out in one stored (uncompressed)
//! frame announced up front, so no client has to reassemble a packet from many frames
//! (mysql-connector-python reads at most two per packet).

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io;

pub const HEADER_LEN: usize = 7;
/// Payloads shorter than this are sent uncompressed, as MySQL does.
const MIN_COMPRESS_LEN: usize = 50;
/// Largest uncompressed chunk put in one frame.
const MAX_FRAME: usize = 0xff_ffff;
/// Decoding stops once this much is produced, in the middle of a frame if need be: a frame
/// of ~16 KiB can inflate to 16 MiB, so inflating whole frames, or a whole read's worth of
/// them, would let one client claim memory far beyond its connection buffer.
const DECODE_BATCH: usize = 64 * 1024;

pub struct CompressState {
    /// Compressed bytes read from the wire, not yet decoded.
    pub raw: BytesMut,
    /// The frame whose header has been read and whose body is not yet fully decoded.
    frame: Option<Frame>,
    next_seq: u8,
    /// Bytes still owed to the announced stored frame.
    stored_left: usize,
    /// The announced stored frame's header, until the first bytes written carry it out.
    stored_header: Option<[u8; HEADER_LEN]>,
    deflate: Compress,
    inflate: Decompress,
}

/// What remains of the frame being decoded.
struct Frame {
    /// Body bytes not yet taken from `raw`.
    body_left: usize,
    /// Bytes the header says the zlib stream still inflates to.
    out_left: usize,
    deflated: bool,
    /// Nothing is left to inflate: a stored body being copied, or bytes after the end of a
    /// zlib stream being skipped.
    ended: bool,
}

fn bad_frame(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("compressed frame {why}"),
    )
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
            frame: None,
            next_seq: 0,
            stored_left: 0,
            stored_header: None,
            deflate: Compress::new(Compression::fast(), true),
            inflate: Decompress::new(true),
        }
    }

    /// Decodes what `raw` holds into `out`, frames whole or in part, until `DECODE_BATCH`
    /// bytes are produced; returns the bytes appended. Zero means `raw` needs more bytes. Call
    /// again before reading more: decoded data may still be waiting in `raw`. A frame that
    /// decodes to more or less than its header states is an error as soon as that shows.
    pub fn decode_frames(&mut self, out: &mut BytesMut) -> io::Result<usize> {
        let mut produced = 0;
        while produced < DECODE_BATCH {
            let Some(f) = self.frame.as_mut() else {
                if self.raw.len() < HEADER_LEN {
                    break;
                }
                let h = &self.raw[..HEADER_LEN];
                let clen = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
                let ulen = usize::from(h[4]) | usize::from(h[5]) << 8 | usize::from(h[6]) << 16;
                self.next_seq = h[3].wrapping_add(1);
                self.raw.advance(HEADER_LEN);
                // A stated length of 0 means the body is sent as is.
                let deflated = ulen != 0;
                if deflated {
                    self.inflate.reset(true);
                }
                self.frame = Some(Frame {
                    body_left: clen,
                    out_left: ulen,
                    deflated,
                    ended: !deflated,
                });
                continue;
            };
            let avail = self.raw.len().min(f.body_left);
            if f.ended {
                // Stored bodies are copied; bytes after a zlib stream's end are dropped.
                let n = if f.deflated {
                    avail
                } else {
                    avail.min(DECODE_BATCH - produced)
                };
                if !f.deflated {
                    out.extend_from_slice(&self.raw[..n]);
                    produced += n;
                }
                self.raw.advance(n);
                f.body_left -= n;
                if f.body_left > 0 {
                    break;
                }
                self.frame = None;
                continue;
            }
            // Where the room reaches the stated end, one byte more notices a stream that goes on.
            let batch_left = DECODE_BATCH - produced;
            let room = if f.out_left < batch_left {
                f.out_left + 1
            } else {
                batch_left
            };
            let start = out.len();
            out.resize(start + room, 0);
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self.inflate.decompress(
                &self.raw[..avail],
                &mut out[start..],
                FlushDecompress::None,
            );
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    out.truncate(start);
                    return Err(bad_frame(&format!("holds a corrupt zlib stream ({e})")));
                }
            };
            let used = (self.inflate.total_in() - in_before) as usize;
            let made = (self.inflate.total_out() - out_before) as usize;
            out.truncate(start + made);
            self.raw.advance(used);
            f.body_left -= used;
            if made > f.out_left {
                return Err(bad_frame("inflates past its stated length"));
            }
            f.out_left -= made;
            produced += made;
            if status == Status::StreamEnd {
                if f.out_left != 0 {
                    return Err(bad_frame("inflates short of its stated length"));
                }
                f.ended = true;
            } else if used == 0 && made == 0 {
                if avail < f.body_left {
                    break;
                }
                return Err(bad_frame("ends before its zlib stream does"));
            }
        }
        Ok(produced)
    }

    /// Announces a stored frame for the next `len` bytes written (at most a frame's worth):
    /// a packet that arrives in pieces can then pass piece by piece yet sit in one frame, as
    /// a server sends it, without the proxy holding it whole. Returns the bytes it will carry.
    pub fn start_stored_frame(&mut self, len: usize) -> usize {
        debug_assert_eq!(self.stored_left, 0, "a stored frame is still open");
        let len = len.min(MAX_FRAME);
        if len == 0 {
            return 0;
        }
        let mut h = [0u8; HEADER_LEN];
        h[..3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
        h[3] = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.stored_header = Some(h);
        self.stored_left = len;
        len
    }

    /// Encodes `data` as one or more frames appended to `out`; what an open stored frame is
    /// still owed goes into it as is.
    pub fn encode(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.stored_left > 0 && !data.is_empty() {
            if let Some(h) = self.stored_header.take() {
                out.extend_from_slice(&h);
            }
            let n = self.stored_left.min(data.len());
            out.extend_from_slice(&data[..n]);
            self.stored_left -= n;
            data = &data[n..];
        }
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
    use std::io::Write;

    /// Decodes until a call produces nothing, checking that no call exceeds the batch.
    fn drain(rx: &mut CompressState, out: &mut BytesMut) -> io::Result<()> {
        for _ in 0..10_000 {
            let before = out.len();
            let n = rx.decode_frames(out)?;
            assert_eq!(out.len() - before, n);
            assert!(n <= DECODE_BATCH, "one call produced {n} bytes");
            if n == 0 {
                return Ok(());
            }
        }
        panic!("decoding did not settle");
    }

    /// A frame whose header states `stated` bytes around the zlib stream of `data`.
    fn zframe(seq: u8, stated: usize, data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
        z.write_all(data).unwrap();
        let body = z.finish().unwrap();
        let mut f = (body.len() as u32).to_le_bytes()[..3].to_vec();
        f.push(seq);
        f.extend_from_slice(&(stated as u32).to_le_bytes()[..3]);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn frames_round_trip_small_and_large() {
        let small = b"tiny".to_vec();
        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let mut expected = small.clone();
        expected.extend_from_slice(&large);
        // Whole reads, reads cutting frames anywhere, and a byte at a time.
        for piece in [1, 7, 1000, 1 << 20] {
            let mut tx = CompressState::new();
            let mut rx = CompressState::new();
            let mut wire = Vec::new();
            tx.encode(&small, &mut wire).unwrap();
            tx.encode(&large, &mut wire).unwrap();
            assert!(wire.len() < large.len(), "repetitive data compresses");
            let mut out = BytesMut::new();
            for bytes in wire.chunks(piece) {
                rx.raw.extend_from_slice(bytes);
                drain(&mut rx, &mut out).unwrap();
            }
            assert!(out[..] == expected[..], "pieces of {piece} bytes");
            assert!(rx.raw.is_empty() && rx.frame.is_none());
        }
    }

    #[test]
    fn inflation_is_decoded_one_batch_at_a_time() {
        // Four frames of 1 MiB of zeros, about 20 KiB on the wire together: every call stops
        // at the batch, in the middle of a frame too.
        let mut tx = CompressState::new();
        let mut wire = Vec::new();
        for _ in 0..4 {
            tx.encode(&vec![0u8; 1 << 20], &mut wire).unwrap();
        }
        assert!(wire.len() < 32 * 1024, "{}", wire.len());
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&wire);
        let mut out = BytesMut::new();
        for _ in 0..4 * (1 << 20) / DECODE_BATCH {
            out.clear();
            assert_eq!(rx.decode_frames(&mut out).unwrap(), DECODE_BATCH);
        }
        assert_eq!(rx.decode_frames(&mut out).unwrap(), 0);
        assert!(rx.raw.is_empty());
    }

    #[test]
    fn a_frame_inflating_past_its_stated_length_is_refused_by_then() {
        let zeros = vec![0u8; 2 << 20];
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&zframe(0, 1000, &zeros));
        let mut out = BytesMut::new();
        assert!(rx.decode_frames(&mut out).is_err());
        assert!(out.len() <= 1001, "{}", out.len());

        // Stated larger than a batch: decoded in batches up to the stated length, then refused.
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&zframe(0, 1 << 20, &zeros));
        let mut out = BytesMut::new();
        assert!(drain(&mut rx, &mut out).is_err());
        assert!(out.len() <= (1 << 20) + 1, "{}", out.len());
    }

    #[test]
    fn a_frame_inflating_short_of_its_stated_length_is_refused() {
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&zframe(0, 200, &[7u8; 100]));
        assert!(drain(&mut rx, &mut BytesMut::new()).is_err());
        // A body cut before its zlib stream ends, with the next frame right behind it.
        let mut f = zframe(0, 100, &[7u8; 100]);
        let cut = f.len() - 7 - 3;
        f[..3].copy_from_slice(&(cut as u32).to_le_bytes()[..3]);
        f.truncate(7 + cut);
        f.extend_from_slice(&zframe(1, 100, &[7u8; 100]));
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&f);
        assert!(drain(&mut rx, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn bytes_after_the_zlib_stream_are_skipped() {
        let mut f = zframe(0, 100, &[7u8; 100]);
        let clen = f.len() - 7 + 3;
        f[..3].copy_from_slice(&(clen as u32).to_le_bytes()[..3]);
        f.extend_from_slice(b"xyz");
        f.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, b'!']);
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&f);
        let mut out = BytesMut::new();
        drain(&mut rx, &mut out).unwrap();
        let mut expected = vec![7u8; 100];
        expected.push(b'!');
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn corrupt_frame_is_an_error() {
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&[3, 0, 0, 0, 10, 0, 0, 1, 2, 3]);
        let mut out = BytesMut::new();
        assert!(rx.decode_frames(&mut out).is_err());
    }

    #[test]
    fn a_stored_frame_carries_a_packet_written_in_pieces() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut tx = CompressState::new();
        let mut wire = Vec::new();
        tx.encode(b"before, compressed or not", &mut wire).unwrap();
        let frames_before = 1;
        assert_eq!(tx.start_stored_frame(big.len()), big.len());
        for piece in big.chunks(16 * 1024) {
            tx.encode(piece, &mut wire).unwrap();
        }
        tx.encode(b"after", &mut wire).unwrap();
        // Three frames: the one before, the stored one holding all pieces, the one after.
        assert_eq!(tx.next_seq(), frames_before + 2);
        let mut rx = CompressState::new();
        rx.raw.extend_from_slice(&wire);
        let mut out = BytesMut::new();
        drain(&mut rx, &mut out).unwrap();
        let mut expected = b"before, compressed or not".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"after");
        assert!(out[..] == expected[..]);
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
