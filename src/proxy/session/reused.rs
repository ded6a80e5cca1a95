//! A heap slot for a future that runs often and briefly (a session's command), reused from
//! a small per-thread list of freed blocks: it keeps the future off the session's own, which
//! every idle session holds, without a malloc and free of a kilobyte per command.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Freed blocks a thread keeps; more running at once are allocated and freed as usual.
const KEEP: usize = 8;

thread_local! {
    static FREE: RefCell<FreeBlocks> = const { RefCell::new(FreeBlocks(Vec::new())) };
}

/// A thread's freed blocks, each with the layout it was allocated with; freed with the thread.
struct FreeBlocks(Vec<(Layout, NonNull<u8>)>);

impl Drop for FreeBlocks {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: allocated with this layout and no longer used.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

/// `F` in a heap block of its own; the block goes back to the dropping thread's list.
pub(crate) struct Reused<F: Future> {
    ptr: NonNull<F>,
}

// SAFETY: `Reused` owns its `F` as a `Box` would; the block itself is plain memory that any
// thread may free with the layout it was allocated with.
unsafe impl<F: Future + Send> Send for Reused<F> {}

// The future never moves out of its block: pinning `Reused` is not needed to pin it.
impl<F: Future> Unpin for Reused<F> {}

impl<F: Future> Reused<F> {
    /// Builds the future with `make` straight into its block: built first and then moved,
    /// a kilobyte-sized future would be copied once per command.
    #[inline(always)]
    pub(crate) fn new(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        assert!(layout.size() > 0, "a future with state");
        let kept = FREE.with(|free| {
            let free = &mut free.borrow_mut().0;
            let at = free.iter().rposition(|(l, _)| *l == layout)?;
            Some(free.swap_remove(at).1)
        });
        let block = kept.unwrap_or_else(|| {
            // SAFETY: the layout has a non-zero size.
            NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
        });
        let ptr = block.cast::<F>();
        // SAFETY: the block is allocated for `F`'s layout and holds nothing.
        unsafe { ptr.as_ptr().write(make()) };
        Reused { ptr }
    }
}

impl<F: Future> Future for Reused<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the block holds a live `F` that stays where it is until it is dropped.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Reused<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the block holds a live `F`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        let block = self.ptr.cast::<u8>();
        let spare = FREE
            .try_with(|free| {
                let free = &mut free.borrow_mut().0;
                if free.len() < KEEP {
                    free.push((layout, block));
                    None
                } else {
                    Some(block)
                }
            })
            .unwrap_or(Some(block));
        if let Some(block) = spare {
            // SAFETY: allocated with this layout and no longer used.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct CountsDrops(Arc<AtomicUsize>);
    impl Drop for CountsDrops {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn runs_the_future_drops_it_once_and_reuses_its_block() {
        let drops = Arc::new(AtomicUsize::new(0));
        let make = |n: u64| {
            let guard = CountsDrops(drops.clone());
            async move {
                tokio::task::yield_now().await;
                let _guard = guard;
                n * 2
            }
        };
        let first = Reused::new(|| make(1));
        let block = first.ptr.cast::<u8>();
        assert_eq!(first.await, 2);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        let second = Reused::new(|| make(2));
        assert_eq!(
            second.ptr.cast::<u8>(),
            block,
            "the freed block is taken again"
        );
        // Dropped before it ran: its captures are dropped all the same.
        drop(second);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_blocks() {
        let many: Vec<_> = (0..KEEP + 4)
            .map(|i| Reused::new(move || async move { i }))
            .collect();
        drop(many);
        assert_eq!(FREE.with(|f| f.borrow().0.len()), KEEP);
    }
}
