//! The text views of this process that stand in for Go's runtime profiles: its OS threads
//! (for `goroutine`), the C allocator's figures (for `heap` and `allocs`) and its argv (`cmdline`).

use std::fmt::Write;

/// One OS thread of this process, from /proc/self/task.
#[derive(Debug)]
pub struct Thread {
    pub tid: u32,
    pub name: String,
    pub state: char,
    pub cpu_seconds: f64,
}

/// Every thread of this process, by thread id; empty where /proc is not mounted.
pub fn threads() -> Vec<Thread> {
    let ticks = clock_ticks();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: Vec<Thread> = dir
        .flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            // A thread may end between the listing and the read: it is left out.
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (name, state, user, system) = parse_stat(&stat)?;
            Some(Thread {
                tid,
                name,
                state,
                cpu_seconds: (user + system) as f64 / ticks,
            })
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// Clock ticks per second, the unit of the CPU times in /proc stat files.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// (name, state, utime, stime in clock ticks) of a `/proc/<pid>[/task/<tid>]/stat` line. The
/// name is in parentheses and may itself hold spaces and parentheses, so it ends at the last ')'.
pub fn parse_stat(stat: &str) -> Option<(String, char, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, state, utime, stime))
}

/// Counts the text view reports beside the threads.
pub struct Tasks {
    pub sessions: u64,
    pub status_runtime_tasks: usize,
    pub status_runtime_workers: usize,
}

/// The `goroutine?debug=1|2` text: what runs in this process, in Go's place. The first line
/// keeps Go's shape ("goroutine profile: total N") with N the thread count, the figure
/// `go_goroutines` reports too.
pub fn threads_text(tasks: &Tasks) -> String {
    let threads = threads();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "goroutine profile: total {}\n\
         # This proxy is not a Go program and has no goroutines. The total above and the lines\n\
         # below are its OS threads (from /proc/self/task), as go_goroutines in /metrics counts\n\
         # them, so scripts that read Go's first line keep working. Each has its state and CPU\n\
         # time; sessions are async tasks on the tiproxy-worker-N threads. Stacks are not captured:\n\
         # a CPU profile (/debug/pprof/profile?seconds=N) shows where the threads spend their time.\n\
         # client sessions: {}\n\
         # status port runtime: {} tasks alive on {} worker threads\n",
        threads.len(),
        tasks.sessions,
        tasks.status_runtime_tasks,
        tasks.status_runtime_workers,
    );
    let _ = writeln!(s, "{:>8} {:5} {:>12}  name", "tid", "state", "cpu_seconds");
    for t in &threads {
        let _ = writeln!(
            s,
            "{:>8} {:5} {:>12.2}  {}",
            t.tid, t.state, t.cpu_seconds, t.name
        );
    }
    s
}

/// The `heap?debug=1` text: the C allocator's own figures; there is no sampling allocator.
pub fn heap_text() -> String {
    let mut s = String::from(
        "heap summary\n\
         # This proxy is not a Go program: there is no sampled heap profile (no allocation stacks).\n\
         # These are the C allocator's totals for the whole process (glibc mallinfo; each wraps at\n\
         # 4 GiB) and the kernel's view of its memory. Use them, and process_resident_memory_bytes\n\
         # and go_memory_classes_heap_objects_bytes in /metrics, to follow memory over time.\n",
    );
    match mallinfo() {
        Some(m) => {
            for (name, bytes, what) in [
                (
                    "in_use_bytes",
                    m.in_use,
                    "handed out to the program and not freed",
                ),
                (
                    "free_held_bytes",
                    m.free_held,
                    "freed, kept by the allocator for reuse",
                ),
                (
                    "arena_bytes",
                    m.arena,
                    "obtained with brk in the main arena",
                ),
                (
                    "mmapped_bytes",
                    m.mmapped,
                    "large blocks held as separate mappings",
                ),
                (
                    "releasable_bytes",
                    m.releasable,
                    "at the arena's top, trimmable",
                ),
            ] {
                let _ = writeln!(s, "{name} {bytes}  # {what}");
            }
        }
        None => s.push_str("# the allocator's figures are not available on this platform\n"),
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if ["VmRSS:", "VmHWM:", "VmSize:", "RssAnon:"]
                .iter()
                .any(|k| line.starts_with(k))
            {
                let _ = writeln!(
                    s,
                    "{}",
                    line.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
    }
    s
}

struct MallInfo {
    in_use: u64,
    free_held: u64,
    arena: u64,
    mmapped: u64,
    releasable: u64,
}

/// `mallinfo`, not `mallinfo2`: the release build links against glibc 2.17 (CentOS 7), which
/// has only the older call (src/metrics/runtime.rs reads it the same way).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mallinfo() -> Option<MallInfo> {
    // SAFETY: mallinfo takes no arguments and returns a plain struct by value.
    #[allow(deprecated)]
    let m = unsafe { libc::mallinfo() };
    let u = |v: libc::c_int| u64::from(v as u32);
    Some(MallInfo {
        in_use: u(m.uordblks) + u(m.hblkhd),
        free_held: u(m.fordblks),
        arena: u(m.arena),
        mmapped: u(m.hblkhd),
        releasable: u(m.keepcost),
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn mallinfo() -> Option<MallInfo> {
    None
}

/// The command line as Go serves it: the arguments separated by NUL bytes.
pub fn cmdline() -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<_> = std::env::args_os().collect();
    args.iter()
        .map(|a| a.as_bytes())
        .collect::<Vec<_>>()
        .join(&0u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100";
        assert_eq!(parse_stat(line), Some(("a) b (c)".into(), 'S', 250, 50)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_lists_its_threads_and_heap() {
        let me = threads();
        let pid = std::process::id();
        assert!(me.iter().any(|t| t.tid == pid), "{me:?}");
        let text = threads_text(&Tasks {
            sessions: 3,
            status_runtime_tasks: 1,
            status_runtime_workers: 1,
        });
        assert!(text.starts_with("goroutine profile: total "), "{text}");
        assert!(
            text.contains(&format!(" {pid} ")),
            "the main thread is listed: {text}"
        );
        assert!(text.contains("client sessions: 3"), "{text}");
        let heap = heap_text();
        assert!(heap.contains("VmRSS:"), "{heap}");
        if cfg!(target_env = "gnu") {
            assert!(heap.contains("in_use_bytes "), "{heap}");
        }
        assert!(!cmdline().is_empty());
    }
}
