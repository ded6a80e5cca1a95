//! Authentication traffic: the backend greeting, auth switch / more-data packets through the
//! proof capture, and COM_CHANGE_USER.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::handshake::{ChangeUser, Greeting};
use tiproxy::proxy::migrate::credential::ProofCapture;

fuzz_target!(|data: &[u8]| {
    let _ = Greeting::parse(data);
    if data.len() >= 4 {
        let caps = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let _ = ChangeUser::parse(&data[4..], caps);
    }
    // Alternate sides at each 0xa5 byte, as packets of an exchange.
    let mut capture = ProofCapture::default();
    for (i, p) in data.split(|&b| b == 0xa5).enumerate() {
        if i % 2 == 0 {
            capture.on_backend(p);
        } else {
            capture.on_client(p);
        }
    }
    let _ = capture.finish();
});
