//! OK, ERR and EOF payloads, as the observer and the error log read them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::response::{
    eof_status, is_eof, is_result_ok, is_terminator, ok_status, terminator_status, ErrPacket,
};

fuzz_target!(|data: &[u8]| {
    let _ = ok_status(data);
    let _ = eof_status(data);
    let _ = terminator_status(data, true);
    let _ = terminator_status(data, false);
    if let Some(&first) = data.first() {
        let _ = is_eof(first, data.len());
        let _ = is_result_ok(first, data.len());
        let _ = is_terminator(first, data.len(), true);
    }
    if let Some(e) = ErrPacket::parse(data) {
        let _ = ErrPacket::parse(&e.encode()).expect("encoded ERR re-parses");
    }
});
