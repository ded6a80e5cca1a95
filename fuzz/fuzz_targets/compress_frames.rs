//! Compressed-protocol frames from a hostile peer, decoded from one read and from two reads cut
//! where the first byte says, as a socket could deliver them: no call may produce more than a
//! batch, and where the bytes arrive must not change what they decode to.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::compress::CompressState;

/// Enough to cover many batches while keeping a run's memory small.
const KEEP: usize = 1 << 20;
const BATCH: usize = 64 * 1024;

/// Decodes `reads` in turn, each drained until a call produces nothing. Returns at most `KEEP`
/// decoded bytes, and whether decoding failed (None once `KEEP` is reached: undecided).
fn decode(reads: &[&[u8]]) -> (Vec<u8>, Option<bool>) {
    let mut st = CompressState::new();
    let mut out = BytesMut::new();
    for read in reads {
        st.raw.extend_from_slice(read);
        loop {
            let before = out.len();
            match st.decode_frames(&mut out) {
                Err(_) => return (out.to_vec(), Some(true)),
                Ok(0) => break,
                Ok(n) => {
                    assert_eq!(out.len() - before, n);
                    assert!(n <= BATCH, "one call produced {n} bytes");
                }
            }
            if out.len() >= KEEP {
                out.truncate(KEEP);
                return (out.to_vec(), None);
            }
        }
    }
    (out.to_vec(), Some(false))
}

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (whole, whole_failed) = decode(&[data]);
    let (split, split_failed) = decode(&[&data[..cut], &data[cut..]]);
    let n = whole.len().min(split.len());
    assert!(
        whole[..n] == split[..n],
        "decoded bytes depend on the read boundary"
    );
    if let (Some(a), Some(b)) = (whole_failed, split_failed) {
        assert_eq!(a, b, "failure depends on the read boundary");
        // A failing call keeps none of its output, so only successes compare in length.
        if !a {
            assert_eq!(whole.len(), split.len());
        }
    }
});
