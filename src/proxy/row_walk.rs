//! The row walk: how the relay passes the rows of a large result without showing each one to
//! its observer. Rows are most of the bytes a proxy moves and, in user space, most of its work
//! per byte, so the loop that steps over them is written for the fewest instructions per row.

use crate::protocol::conn::HEADER_LEN;
use crate::protocol::constants::MAX_PAYLOAD;

/// Skips the whole row packets at the start of `buf` (all but 0xFE/0xFF-led, empty or 16 MiB
/// ones, which the observer must see), checking and advancing `seq`. Returns the bytes skipped.
/// A row is skipped only when the start of the next packet is in `buf` too: the last one before
/// the buffer's end goes the ordinary way, which costs a row per read and spares every row a
/// second bounds check.
pub fn skip_rows(buf: &[u8], seq: &mut u8) -> usize {
    skip_rows_with(buf, seq, walk)
}

#[inline(always)]
fn skip_rows_with(buf: &[u8], seq: &mut u8, walk: Walk) -> usize {
    // A header read as one little-endian word holds the length in its low 24 bits and the
    // sequence id in its top byte. Adding `key`, the complement of the due id's word, gives the
    // length less one when the id is right. When the id is wrong, or the packet is empty, the
    // sum is 2^24 - 1 or more, and so is it for a 16 MiB packet (2^24 - 2, plus the header);
    // walking at most 16 MiB, such a packet always seems to end past the buffer. So the one
    // comparison that keeps the walk inside the buffer also checks the id and the length.
    let key = !(u32::from(*seq) << 24);
    // The last offset a packet may start at and still have its header and first byte in `buf`.
    let Some(last) = buf.len().min(MAX_PAYLOAD + 1).checked_sub(HEADER_LEN + 1) else {
        return 0;
    };
    // SAFETY: the five bytes at `last` are in `buf`, as the walk requires.
    let (at, key) = unsafe { walk(buf.as_ptr(), last, key) };
    *seq = (!key >> 24) as u8;
    at
}

/// Walks rows from `base` while each is a row (first byte below 0xFE) and the packet after it
/// starts at or before `last`; returns where it stopped and the key due there, `key` less one
/// in the top byte per row. Safety: the five bytes at `base + last` must be readable, and
/// `last` at most 2^24 - 5.
type Walk = unsafe fn(base: *const u8, last: usize, key: u32) -> (usize, u32);

#[cfg(not(target_arch = "x86_64"))]
use walk_portable as walk;
#[cfg(target_arch = "x86_64")]
use walk_x86_64 as walk;

/// The walk in Rust: ten instructions a row as compiled.
#[cfg(any(test, not(target_arch = "x86_64")))]
unsafe fn walk_portable(base: *const u8, last: usize, mut key: u32) -> (usize, u32) {
    let mut at = 0;
    loop {
        // SAFETY (all three blocks): `at <= last` (the caller's bound, then checked before each
        // step), so the five bytes at `at` are readable.
        let p = unsafe { base.add(at) };
        if unsafe { *p.add(HEADER_LEN) } >= 0xFE {
            break;
        }
        let word = unsafe { p.cast::<u32>().read_unaligned() };
        let next = at + HEADER_LEN + 1 + u32::from_le(word).wrapping_add(key) as usize;
        if next > last {
            break;
        }
        at = next;
        key = key.wrapping_sub(1 << 24);
    }
    (at, key)
}

/// The same walk by hand, two rows a turn: eight instructions a row and a half for the turn,
/// where the compiler's best (`walk_portable`) takes ten, re-adding the header length apart and
/// moving the offset between registers. At ten thousand rows a result, that is 15,000
/// instructions a large query, a tenth of all a proxy spends in user space on one.
#[cfg(target_arch = "x86_64")]
unsafe fn walk_x86_64(base: *const u8, last: usize, mut key: u32) -> (usize, u32) {
    let mut at: usize = 0;
    // SAFETY: reads only; each offset read from is `last` or less, checked before its bytes are
    // read (0 by the caller), and the five bytes at `last` are readable (the caller's bound).
    // `len` is zero-extended by the 32-bit add, so the `lea` sums stay below 2^33.
    unsafe {
        std::arch::asm!(
            "2:",
            "cmp byte ptr [{base} + {at} + 4], 0xfd",
            "ja 4f",
            "mov {len:e}, dword ptr [{base} + {at}]",
            "add {len:e}, {key:e}",
            "lea {next}, [{at} + {len} + 5]",
            "cmp {next}, {last}",
            "ja 4f",
            "sub {key:e}, 0x1000000",
            "cmp byte ptr [{base} + {next} + 4], 0xfd",
            "ja 3f",
            "mov {len:e}, dword ptr [{base} + {next}]",
            "add {len:e}, {key:e}",
            "lea {at}, [{next} + {len} + 5]",
            "cmp {at}, {last}",
            "ja 3f",
            "sub {key:e}, 0x1000000",
            "jmp 2b",
            "3:",
            "mov {at}, {next}",
            "4:",
            base = in(reg) base,
            last = in(reg) last,
            at = inout(reg) at,
            key = inout(reg) key,
            len = out(reg) _,
            next = out(reg) _,
            options(nostack, readonly, pure),
        );
    }
    (at, key)
}

/// What `skip_rows` must do, written the plain way: no word tricks, no unchecked reads. The
/// unit tests and the `row_walk` fuzz target hold the fast walks to it.
#[doc(hidden)]
pub fn skip_rows_plainly(buf: &[u8], mut seq: u8) -> (usize, u8) {
    let mut at = 0;
    while at + HEADER_LEN < buf.len() {
        let (len, got) = crate::protocol::conn::parse_header(&buf[at..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        crate::protocol::conn::put_header(&mut p, payload.len(), seq);
        p.extend_from_slice(payload);
        p
    }

    /// Every walk built on this target, each checked on its own.
    const WALKS: &[(&str, Walk)] = &[
        ("portable", walk_portable),
        #[cfg(target_arch = "x86_64")]
        ("x86_64", walk_x86_64),
    ];

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
            for &(name, walk) in WALKS {
                let mut got_seq = start;
                let skipped = skip_rows_with(stream, &mut got_seq, walk);
                assert_eq!(
                    (skipped, got_seq),
                    skip_rows_plainly(stream, start),
                    "{name} walk, stream {stream:02x?} from sequence id {start}"
                );
            }
        }
    }

    #[test]
    fn skip_rows_leaves_a_whole_16_mib_packet_to_the_observer() {
        for &(_, walk) in WALKS {
            let skip_rows = |b: &[u8], s: &mut u8| skip_rows_with(b, s, walk);
            // The walk's single bounds comparison rules out 16 MiB packets only because it looks
            // at no more than 16 MiB; a buffer holding one whole proves the window is kept.
            let mut buf = packet(3, b"\x01a");
            buf.extend_from_slice(&[0xff, 0xff, 0xff, 4]);
            buf.resize(buf.len() + MAX_PAYLOAD, 0x01);
            buf.extend_from_slice(&packet(5, b"\x01b"));
            buf.extend_from_slice(&packet(6, b"\x01c"));
            let mut seq = 3;
            assert_eq!(skip_rows(&buf, &mut seq), 6);
            assert_eq!(seq, 4);
        }
    }

    #[test]
    fn skip_rows_stops_at_what_the_observer_must_see() {
        for &(_, walk) in WALKS {
            let skip_rows = |b: &[u8], s: &mut u8| skip_rows_with(b, s, walk);
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
}
