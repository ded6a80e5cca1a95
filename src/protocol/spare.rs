//! Each thread's list of spare read buffers: connections give their empty buffer back here
//! when their socket has nothing to read, and take one at their next read. The list is let go
//! once it has gone unused for a while, so a proxy whose sessions all sit idle holds none.

use bytes::BytesMut;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// Reusing buffers keeps a busy proxy off malloc/free of 32 KiB blocks per round trip (glibc
/// answers those frees with madvise trims); the bound keeps what a quiet proxy holds small.
const SPARE_MAX: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Set by every take and give-back; cleared by the idle check.
    static USED: Cell<bool> = const { Cell::new(false) };
}

/// A spare buffer of this thread, if it has one.
#[inline]
pub fn take() -> Option<BytesMut> {
    USED.set(true);
    SPARE.with(|p| p.borrow_mut().pop())
}

/// Gives the (empty) buffer up; one grown past twice `buf_size` for a large packet is freed
/// rather than kept, so the list holds at most `SPARE_MAX` ordinary buffers.
pub fn give_back(rbuf: &mut BytesMut, buf_size: usize) {
    if rbuf.capacity() == 0 {
        return;
    }
    let mut b = std::mem::take(rbuf);
    if b.capacity() > 2 * buf_size {
        return;
    }
    b.clear();
    USED.set(true);
    SPARE.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < SPARE_MAX {
            p.push(b);
        }
    });
}

/// How many spare buffers this thread holds.
pub fn count() -> usize {
    SPARE.with(|p| p.borrow().len())
}

/// Frees this thread's spare buffers whenever a whole `period` passed without a take or a
/// give-back, and hands the freed pages back to the system. Runs for the thread's life.
///
/// Why: at a burst of logins the list fills up and the pages its buffers touched stay resident;
/// with every session idle afterwards nothing would ever take them again.
pub async fn release_while_unused(period: Duration) {
    let mut tick = crate::timer::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if USED.replace(false) {
            continue;
        }
        let freed = SPARE.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if !freed.is_empty() {
            drop(freed);
            trim_heap();
        }
    }
}

/// glibc keeps freed blocks inside its heaps resident; `malloc_trim` returns their whole pages.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_keeps_ordinary_buffers_up_to_its_bound_and_hands_them_out() {
        std::thread::spawn(|| {
            for _ in 0..SPARE_MAX + 3 {
                let mut b = BytesMut::with_capacity(1024);
                b.extend_from_slice(b"left over");
                give_back(&mut b, 1024);
                assert_eq!(b.capacity(), 0, "the connection no longer holds it");
            }
            assert_eq!(count(), SPARE_MAX);
            let mut large = BytesMut::with_capacity(4096);
            give_back(&mut large, 1024);
            assert_eq!(
                count(),
                SPARE_MAX,
                "a buffer grown for a large packet is freed"
            );
            let b = take().expect("a spare buffer");
            assert!(b.is_empty(), "a spare buffer comes back empty");
            assert_eq!(count(), SPARE_MAX - 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn unused_spares_are_let_go_and_used_ones_kept() {
        // A paused clock: the test follows periods, not the machine's speed.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let period = Duration::from_millis(50);
            let releaser = tokio::spawn(release_while_unused(period));
            let mut b = BytesMut::with_capacity(1024);
            give_back(&mut b, 1024);
            // Kept while something takes or gives back within each period.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut b = take().expect("the spare buffer is still there");
                give_back(&mut b, 1024);
            }
            assert_eq!(count(), 1);
            // Let go after a whole period with no use: wait up to 40 periods.
            for _ in 0..40 {
                if count() == 0 {
                    break;
                }
                tokio::time::sleep(period).await;
            }
            assert_eq!(count(), 0, "an unused spare list is freed");
            releaser.abort();
        });
    }
}
