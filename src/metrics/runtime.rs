//! The two Go-runtime families TiProxy's Grafana dashboard draws (`go_goroutines`,
//! `go_memory_classes_heap_objects_bytes`), with this process's nearest true figures: there is
//! no Go runtime here, so goroutines are the process's OS threads (sessions are async tasks
//! on a fixed set of them), and heap object bytes are what the C allocator has handed out and
//! not taken back. Refreshed by the liveness monitor every tick; docs/metrics.md says so.

/// Reads both figures now and sets the gauges.
pub fn refresh(m: &super::Metrics) {
    if let Some(n) = threads() {
        m.go_goroutines.set(n);
    }
    if let Some(b) = heap_in_use() {
        m.go_heap_objects_bytes.set(b);
    }
}

/// `Threads:` of /proc/self/status.
fn threads() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes allocated and not freed, over every glibc arena, including large mmap'd blocks.
/// `mallinfo`, not `mallinfo2`: the release build links against glibc 2.17 (CentOS 7), which
/// has only the older call; its fields are C ints, read as unsigned (exact up to 4 GiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use() -> Option<i64> {
    // SAFETY: mallinfo takes no arguments and returns a plain struct by value.
    #[allow(deprecated)]
    let info = unsafe { libc::mallinfo() };
    Some(i64::from(info.uordblks as u32) + i64::from(info.hblkhd as u32))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<i64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_are_read_and_grow_with_allocation() {
        assert!(super::threads().is_some_and(|n| n >= 1));
        if let Some(before) = super::heap_in_use() {
            // black_box: an optimised build would otherwise drop the unused allocation.
            let held = std::hint::black_box(vec![7u8; 8 << 20]);
            let after = super::heap_in_use().expect("heap figure");
            assert!(
                after >= before + (8 << 20) - (1 << 20),
                "{before} -> {after}"
            );
            drop(held);
        }
    }
}
