//! The streaming forwarder: moves packets from one connection to the other, showing each
//! packet's start to an observer that decides where the exchange ends. Bytes are forwarded
//! straight from the read buffer with one write per read; packets larger than the buffer
//! pass through in pieces and are never held whole.

use crate::protocol::conn::{parse_header, PacketConn, HEADER_LEN};
use crate::protocol::constants::MAX_PAYLOAD;
use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    More,
    Done,
}

/// Sees the start of each logical packet; continuation fragments of 16 MiB packets are not shown.
pub trait Observer {
    /// `payload` is the whole payload when `complete`, else at least its first byte.
    fn on_packet(
        &mut self,
        len: usize,
        payload: &[u8],
        complete: bool,
    ) -> Result<Verdict, ProtocolError>;

    /// May rewrite a whole packet `on_packet` just saw, before it is forwarded.
    fn patch(&mut self, _payload: &mut [u8]) {}

    /// True while every packet up to one starting with 0xFE (EOF or OK) or 0xFF (ERR) is a row
    /// the observer would only pass: the relay may then skip such packets without showing them.
    fn in_rows(&self) -> bool {
        false
    }

    /// True (once) when the packet just shown ends one result of several: a server flushes
    /// there, so towards a compressed client the frame ends and the numbering restarts.
    fn take_flush_point(&mut self) -> bool {
        false
    }
}

/// Skips the whole row packets at the start of `buf` (all but 0xFE/0xFF-led, empty or 16 MiB
/// ones, which the observer must see), checking and advancing `seq`. Returns the bytes skipped.
/// A row is skipped only when the start of the next packet is in `buf` too: the last one before
/// the buffer's end goes the ordinary way, which costs a row per read and spares every row a
/// second bounds check. Large results are thousands of short rows, and this loop is all the
/// work each one costs.
fn skip_rows(buf: &[u8], seq: &mut u8) -> usize {
    // A header read as one little-endian word holds the length in its low 24 bits and the
    // sequence id in its top byte. Adding `key`, the complement of the due id's word, gives the
    // length less one when the id is right and wraps to 2^24 or more when it is not; so a single
    // comparison checks the id and rules out empty and 16 MiB packets, with no masking.
    let mut key = !(u32::from(*seq) << 24);
    // The last offset a packet may start at and still have its header and first byte in `buf`.
    let Some(last) = buf.len().checked_sub(HEADER_LEN + 1) else {
        return 0;
    };
    let mut at = 0;
    loop {
        // SAFETY: `at <= last` (checked before the loop and before each step), so the five
        // bytes at `at` are in `buf`. Unchecked reads keep the loop at a dozen instructions.
        let (word, first) = unsafe {
            let p = buf.as_ptr().add(at);
            (p.cast::<u32>().read_unaligned(), *p.add(HEADER_LEN))
        };
        let len_less_one = u32::from_le(word).wrapping_add(key);
        if len_less_one >= MAX_PAYLOAD as u32 - 1 || first >= 0xFE {
            break;
        }
        let next = at + HEADER_LEN + 1 + len_less_one as usize;
        if next > last {
            break;
        }
        at = next;
        key = key.wrapping_sub(1 << 24);
    }
    *seq = (!key >> 24) as u8;
    at
}

#[derive(Debug)]
pub enum RelayError {
    /// Reading the source failed or it closed.
    Source(io::Error),
    /// Writing the destination failed.
    Dest(io::Error),
    /// A packet that cannot be where it is.
    Protocol(ProtocolError),
}

/// What is wrong with a packet the relay or its observer saw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("packet with sequence id {got} where {due} was due")]
    Sequence { got: u8, due: u8 },
    #[error("empty packet where a response was expected")]
    EmptyResponse,
    #[error("truncated OK packet")]
    TruncatedOk,
    #[error("unexpected {0:#04x} in a prepare response")]
    UnexpectedInPrepare(u8),
    #[error("malformed column count {0:02x?}")]
    ColumnCount(Vec<u8>),
}

async fn forward_scanned(
    src: &mut PacketConn,
    dst: &mut PacketConn,
    scan: &mut usize,
) -> Result<(), RelayError> {
    if *scan > 0 {
        dst.write_raw(&src.buffered()[..*scan])
            .await
            .map_err(RelayError::Dest)?;
        src.consume(*scan);
        *scan = 0;
    }
    Ok(())
}

async fn read_more(src: &mut PacketConn) -> Result<(), RelayError> {
    match src.fill_more().await {
        Ok(0) => Err(RelayError::Source(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(RelayError::Source(e)),
    }
}

/// Forwards packets from `src` to `dst` until the observer says `Done` and that logical
/// packet has been written. Nothing is read past the final packet. `seq` is the sequence id
/// the next packet must carry; a packet out of order is refused before it is forwarded.
pub async fn relay(
    src: &mut PacketConn,
    dst: &mut PacketConn,
    obs: &mut impl Observer,
    seq: &mut u8,
) -> Result<(), RelayError> {
    let whole_limit = src.buf_size().saturating_sub(HEADER_LEN).max(64);
    // With the compressed protocol a server numbers the packets of one response on from the
    // sequence id of its first frame (net_flush syncs the two) and keeps counting across frames
    // until the response ends; go-sql-driver/mysql and mysql_common check exactly that. So
    // packets towards a compressed client are renumbered that way, and packets from one are
    // renumbered into the backend's plain sequence.
    let (src_comp, dst_comp) = (src.is_compressed(), dst.is_compressed());
    let mut out_seq = dst.next_frame_seq().unwrap_or(0);
    let mut flush_after = false;
    let mut scan = 0usize;
    // Bytes of the current physical packet that were not in the buffer yet.
    let mut skip = 0usize;
    let mut continuing = false;
    let mut done = false;
    loop {
        if skip > 0 {
            let avail = src.buffered().len() - scan;
            let take = avail.min(skip);
            scan += take;
            skip -= take;
            if skip > 0 {
                forward_scanned(src, dst, &mut scan).await?;
                read_more(src).await?;
                continue;
            }
        } else {
            let buf = src.buffered();
            let have = buf.len() - scan;
            if have < HEADER_LEN {
                if done && !continuing {
                    return forward_scanned(src, dst, &mut scan).await;
                }
                forward_scanned(src, dst, &mut scan).await?;
                read_more(src).await?;
                continue;
            }
            if done && !continuing {
                return forward_scanned(src, dst, &mut scan).await;
            }
            if !continuing && !src_comp && !dst_comp && obs.in_rows() {
                let skipped = skip_rows(&buf[scan..], seq);
                if skipped > 0 {
                    scan += skipped;
                    continue;
                }
            }
            let (len, got) = parse_header(&buf[scan..]);
            if !src_comp && got != *seq {
                return Err(RelayError::Protocol(ProtocolError::Sequence {
                    got,
                    due: *seq,
                }));
            }
            let body = have - HEADER_LEN;
            if !continuing {
                let verdict = if len <= whole_limit {
                    if body < len {
                        forward_scanned(src, dst, &mut scan).await?;
                        read_more(src).await?;
                        continue;
                    }
                    let p = &buf[scan + HEADER_LEN..scan + HEADER_LEN + len];
                    let verdict = obs.on_packet(len, p, true);
                    obs.patch(&mut src.buffered_mut()[scan + HEADER_LEN..scan + HEADER_LEN + len]);
                    verdict
                } else {
                    if body == 0 {
                        forward_scanned(src, dst, &mut scan).await?;
                        read_more(src).await?;
                        continue;
                    }
                    let p = &buf[scan + HEADER_LEN..scan + HEADER_LEN + body.min(len)];
                    obs.on_packet(len, p, false)
                };
                if verdict.map_err(RelayError::Protocol)? == Verdict::Done {
                    done = true;
                }
                flush_after = obs.take_flush_point() && dst_comp;
            }
            if dst_comp && have < HEADER_LEN + len {
                // Larger than the buffer, so it passes in pieces: one stored frame, announced
                // before the first piece, keeps the packet in one frame as a server sends it.
                forward_scanned(src, dst, &mut scan).await?;
                dst.start_stored_frame(HEADER_LEN + len);
            }
            if src_comp || dst_comp {
                let out = if dst_comp { out_seq } else { *seq };
                out_seq = out_seq.wrapping_add(1);
                src.buffered_mut()[scan + 3] = out;
            }
            continuing = len == MAX_PAYLOAD;
            *seq = seq.wrapping_add(1);
            let total = HEADER_LEN + len;
            if have >= total {
                scan += total;
                if std::mem::take(&mut flush_after) {
                    forward_scanned(src, dst, &mut scan).await?;
                    out_seq = dst.next_frame_seq().unwrap_or(0);
                }
            } else {
                scan += have;
                skip = total - have;
                continue;
            }
        }
        if done && !continuing && skip == 0 {
            return forward_scanned(src, dst, &mut scan).await;
        }
    }
}

/// Ends at the first logical packet: a command, however many 16 MiB fragments it has.
pub struct OnePacket;

impl Observer for OnePacket {
    fn on_packet(&mut self, _: usize, _: &[u8], _: bool) -> Result<Verdict, ProtocolError> {
        Ok(Verdict::Done)
    }
}

/// LOAD DATA LOCAL INFILE content: packets until an empty one.
pub struct UntilEmpty;

impl Observer for UntilEmpty {
    fn on_packet(&mut self, len: usize, _: &[u8], _: bool) -> Result<Verdict, ProtocolError> {
        Ok(if len == 0 {
            Verdict::Done
        } else {
            Verdict::More
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        crate::protocol::conn::put_header(&mut p, payload.len(), seq);
        p.extend_from_slice(payload);
        p
    }

    /// What `skip_rows` must do, written the plain way: no word tricks, no unchecked reads.
    fn skip_rows_plainly(buf: &[u8], mut seq: u8) -> (usize, u8) {
        let mut at = 0;
        while at + HEADER_LEN < buf.len() {
            let (len, got) = parse_header(&buf[at..]);
            let next = at + HEADER_LEN + len;
            if got != seq || len == 0 || len >= MAX_PAYLOAD || buf[at + HEADER_LEN] >= 0xFE {
                break;
            }
            if next + HEADER_LEN + 1 > buf.len() {
                break;
            }
            at = next;
            seq = seq.wrapping_add(1);
        }
        (at, seq)
    }

    #[test]
    fn skip_rows_agrees_with_the_plain_walk_on_random_streams() {
        // A fixed xorshift sequence: the same 20,000 streams on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let start = next() as u8;
            let mut seq = start;
            let mut buf = Vec::new();
            for _ in 0..next() % 12 {
                let r = next();
                let len = match r % 16 {
                    0 => 0,
                    1 => MAX_PAYLOAD,
                    _ => (r >> 8) as usize % 40 + 1,
                };
                let id = if r % 29 == 0 {
                    seq.wrapping_add(1)
                } else {
                    seq
                };
                buf.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, id]);
                let first = match (r >> 16) % 13 {
                    0 => 0xfe,
                    1 => 0xff,
                    2 => 0xfd,
                    _ => (r >> 24) as u8 % 0xfb,
                };
                buf.push(first);
                buf.extend((1..len.min(40)).map(|i| (r >> (i % 48)) as u8));
                seq = seq.wrapping_add(1);
            }
            let cut = if buf.is_empty() {
                0
            } else {
                next() as usize % (buf.len() + 1)
            };
            let stream = &buf[..cut.max(buf.len() * (next() % 2) as usize)];
            let mut got_seq = start;
            let skipped = skip_rows(stream, &mut got_seq);
            assert_eq!(
                (skipped, got_seq),
                skip_rows_plainly(stream, start),
                "stream {stream:02x?} from sequence id {start}"
            );
        }
    }

    #[test]
    fn skip_rows_stops_at_what_the_observer_must_see() {
        let rows: Vec<u8> = [
            packet(5, b"\x01a"),
            packet(6, b"\xfb"),
            packet(7, b"\x00\x00"),
        ]
        .concat();
        for (stop, why) in [
            (packet(8, &[0xfe, 0, 0, 2, 0]), "EOF"),
            (packet(8, &[0xff, 0x15, 0x04]), "ERR"),
            (packet(8, b""), "empty packet"),
            (packet(9, b"\x01b"), "sequence gap"),
            (packet(8, b"\x05abc"), "row cut by the buffer end"),
        ] {
            let mut buf = rows.clone();
            buf.extend_from_slice(&stop);
            if why == "row cut by the buffer end" {
                buf.truncate(buf.len() - 1);
            } else {
                buf.extend_from_slice(&packet(9, b"\x01z"));
            }
            let mut seq = 5;
            assert_eq!(skip_rows(&buf, &mut seq), rows.len(), "{why}");
            assert_eq!(seq, 8, "{why}");
        }
        let mut seq = 4;
        assert_eq!(
            skip_rows(&rows, &mut seq),
            0,
            "a wrong first sequence id skips nothing"
        );
        assert_eq!(seq, 4);
        let mut seq = 6;
        assert_eq!(
            skip_rows(&rows, &mut seq),
            0,
            "a first sequence id behind the due one skips nothing"
        );
        assert_eq!(seq, 6);
        let wrapping: Vec<u8> = [
            packet(254, b"\x01a"),
            packet(255, b"\x01b"),
            packet(0, b"\x01c"),
        ]
        .concat();
        let mut seq = 254;
        assert_eq!(
            skip_rows(&wrapping, &mut seq),
            wrapping.len() - 6,
            "sequence ids wrap from 255 to 0"
        );
        assert_eq!(seq, 0);
        let mut seq = 5;
        assert_eq!(
            skip_rows(&rows, &mut seq),
            rows.len() - 6,
            "the last row before the buffer's end is left to the ordinary path"
        );
        assert_eq!(seq, 7);
        let mut seq = 5;
        assert_eq!(
            skip_rows(&rows[..4], &mut seq),
            0,
            "a bare header is not a row yet"
        );
    }
}
