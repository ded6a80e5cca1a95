//! PROXY protocol v2 headers: every prefix must either ask for more, parse, or be refused,
//! and a parsed header never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = parse(data) {
        assert!(h.len <= data.len());
        assert_eq!(parse(&data[..h.len]), Ok(Some(h)));
    }
});
