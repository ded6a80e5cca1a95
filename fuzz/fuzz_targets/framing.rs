//! Packet framing as the relay walks it: headers from arbitrary bytes, each packet shown to
//! the response observer whole or as a prefix, the way `proxy::relay` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiproxy::protocol::conn::{parse_header, HEADER_LEN};
use tiproxy::proxy::relay::{Observer, Verdict};
use tiproxy::proxy::response::{ResponseObserver, Shape};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let shape = match sel & 3 {
        0 => Shape::ResultSets,
        1 => Shape::Prepare,
        2 => Shape::Rows,
        _ => Shape::Single,
    };
    // Small limits make the "larger than the buffer" path reachable with small inputs.
    let whole_limit = 1 + usize::from(sel >> 3) * 8;
    let mut obs = ResponseObserver::new(shape, sel & 4 != 0);
    while rest.len() >= HEADER_LEN {
        let (len, _seq) = parse_header(rest);
        let body = &rest[HEADER_LEN..];
        let verdict = if len <= whole_limit {
            if body.len() < len {
                return;
            }
            obs.on_packet(len, &body[..len], true)
        } else {
            if body.is_empty() {
                return;
            }
            obs.on_packet(len, &body[..body.len().min(len)], false)
        };
        match verdict {
            Ok(Verdict::Done) | Err(_) => return,
            Ok(Verdict::More) => {}
        }
        if obs.local_infile {
            obs.resume_after_infile();
        }
        rest = &body[body.len().min(len)..];
    }
});
