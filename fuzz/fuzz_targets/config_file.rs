//! Whole config files: parsing, defaults, validation and the unknown-key warnings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tiproxy::config::parse_str(text);
    }
});
