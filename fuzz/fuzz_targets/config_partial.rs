//! Partial TOML bodies of the config API, merged over the default config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::config::{merge_partial, Config};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = merge_partial(&Config::default(), text);
    }
});
