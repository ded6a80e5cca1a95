//! The row walk (hand-written on x86_64) against its plain statement, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::proxy::row_walk::{skip_rows, skip_rows_plainly};

fuzz_target!(|data: &[u8]| {
    let Some((&start, stream)) = data.split_first() else {
        return;
    };
    let mut seq = start;
    let skipped = skip_rows(stream, &mut seq);
    assert_eq!((skipped, seq), skip_rows_plainly(stream, start));
});
