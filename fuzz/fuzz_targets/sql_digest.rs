//! Statement text from clients: the digest, the migration classifier and state tracking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::proxy::digest::digest;
use tiproxy::proxy::migrate::state::{classify, is_begin, Tracked};

fuzz_target!(|data: &[u8]| {
    let _ = digest(data);
    let _ = classify(data);
    let _ = is_begin(data);
    let mut t = Tracked::default();
    t.after_query(data, true);
    t.after_prepare(1, data, false);
    t.after_init_db(data);
    let _ = t.blocker();
});
