//! Compressed-protocol frames from a hostile peer, fed in two reads like a socket would.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::compress::CompressState;

fuzz_target!(|data: &[u8]| {
    let mut st = CompressState::new();
    let mut out = BytesMut::new();
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    st.raw.extend_from_slice(&data[..cut]);
    if st.decode_frames(&mut out).is_err() {
        return;
    }
    st.raw.extend_from_slice(&data[cut..]);
    let _ = st.decode_frames(&mut out);
});
