//! The streaming forwarder: moves packets from one connection to the other, showing each
//! packet's start to an observer that decides where the exchange ends. Bytes are forwarded
//! straight from the read buffer with one write per read; packets larger than the buffer
//! pass through in pieces and are never held whole.

use crate::protocol::conn::{parse_header, PacketConn, HEADER_LEN};
use crate::protocol::constants::MAX_PAYLOAD;
use crate::proxy::row_walk::skip_rows;
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

/// Forwards the scanned bytes as far as the destination takes them at once; true when all went.
#[inline]
fn forward_now(
    src: &mut PacketConn,
    dst: &mut PacketConn,
    scan: &mut usize,
) -> Result<bool, RelayError> {
    if *scan > 0 {
        let sent = dst
            .write_raw_now(&src.buffered()[..*scan])
            .map_err(RelayError::Dest)?;
        src.consume(sent);
        *scan -= sent;
    }
    Ok(*scan == 0)
}

/// Forwards the scanned bytes, waiting for the destination if it is full. The common case
/// (everything taken at once) costs no future.
macro_rules! forward {
    ($src:expr, $dst:expr, $scan:expr) => {
        if !forward_now($src, $dst, $scan)? {
            forward_scanned($src, $dst, $scan).await?;
        }
    };
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

fn read_result(got: io::Result<usize>) -> Result<(), RelayError> {
    match got {
        Ok(0) => Err(RelayError::Source(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(RelayError::Source(e)),
    }
}

async fn read_more(src: &mut PacketConn) -> Result<(), RelayError> {
    read_result(src.fill_more().await)
}

/// Reads one relay may take without giving its worker back: while both sockets keep up, a
/// large result could otherwise hold the thread, and every session on it, until its end.
/// 32 reads are at most 1 MiB with the default buffer.
const READS_PER_TURN: u32 = 32;

/// Reads more into the source's buffer: at once when bytes are there, else by waiting; and
/// every `READS_PER_TURN` reads, lets the worker's other sessions run first.
macro_rules! read {
    ($src:expr, $reads_left:expr) => {
        if $reads_left == 0 {
            $reads_left = READS_PER_TURN;
            tokio::task::yield_now().await;
        }
        $reads_left -= 1;
        match $src.fill_now() {
            Some(got) => read_result(got)?,
            None => read_more($src).await?,
        }
    };
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
    let mut reads_left = READS_PER_TURN;
    loop {
        if skip > 0 {
            let avail = src.buffered().len() - scan;
            let take = avail.min(skip);
            scan += take;
            skip -= take;
            if skip > 0 {
                forward!(src, dst, &mut scan);
                read!(src, reads_left);
                continue;
            }
        } else {
            let buf = src.buffered();
            let have = buf.len() - scan;
            if have < HEADER_LEN {
                if done && !continuing {
                    forward!(src, dst, &mut scan);
                    return Ok(());
                }
                forward!(src, dst, &mut scan);
                read!(src, reads_left);
                continue;
            }
            if done && !continuing {
                forward!(src, dst, &mut scan);
                return Ok(());
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
                        forward!(src, dst, &mut scan);
                        read!(src, reads_left);
                        continue;
                    }
                    let p = &buf[scan + HEADER_LEN..scan + HEADER_LEN + len];
                    let verdict = obs.on_packet(len, p, true);
                    obs.patch(&mut src.buffered_mut()[scan + HEADER_LEN..scan + HEADER_LEN + len]);
                    verdict
                } else {
                    if body == 0 {
                        forward!(src, dst, &mut scan);
                        read!(src, reads_left);
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
                forward!(src, dst, &mut scan);
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
                    forward!(src, dst, &mut scan);
                    out_seq = dst.next_frame_seq().unwrap_or(0);
                }
            } else {
                scan += have;
                skip = total - have;
                continue;
            }
        }
        if done && !continuing && skip == 0 {
            forward!(src, dst, &mut scan);
            return Ok(());
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
