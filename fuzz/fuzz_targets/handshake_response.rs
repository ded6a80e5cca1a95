//! The client's HandshakeResponse41, and re-encoding whatever parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::handshake::{is_ssl_request, HandshakeResponse};

fuzz_target!(|data: &[u8]| {
    let _ = is_ssl_request(data);
    if let Ok(r) = HandshakeResponse::parse(data) {
        let again = HandshakeResponse::parse(&r.encode()).expect("encoded response re-parses");
        assert_eq!(again.user, r.user);
    }
});
