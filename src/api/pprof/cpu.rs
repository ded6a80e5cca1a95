//! `/debug/pprof/profile`: a CPU profile of this process, sampled with SIGPROF (the `pprof`
//! crate) while the request waits asynchronously, then resolved to function names off the
//! runtime's threads. One profile at a time: the sampling timer and signal are process-wide.

use super::proto::{encode_cpu, CpuReport, Frame};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// Samples per second of CPU time, as Go's profiler takes.
pub const HZ: i32 = 100;
/// Go's default duration when `seconds` is absent.
pub const DEFAULT_SECONDS: u64 = 30;
/// The longest profile served: sampling costs CPU for as long as it runs.
pub const MAX_SECONDS: u64 = 300;

/// Unwinding from inside these libraries can deadlock on their locks (the unwinder's own
/// among them), so samples whose interrupted code lies there are skipped.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Why no profile was produced.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("a CPU profile is already being taken; try again when it has finished (one at a time: the sampling timer is process-wide)")]
    Busy,
    #[error("`seconds` must be a whole number from 1 to {MAX_SECONDS}, not {0:?}")]
    BadSeconds(String),
    #[error("the CPU profiler could not run: {0}")]
    Profiler(String),
}

/// The profile's length from the request's `seconds` (absent or empty: Go's 30 s).
pub fn parse_seconds(query: Option<&str>) -> Result<u64, CpuError> {
    let value = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "seconds")
        .map(|(_, v)| v.into_owned());
    match value.as_deref() {
        None | Some("") => Ok(DEFAULT_SECONDS),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(n),
            _ => Err(CpuError::BadSeconds(v.to_owned())),
        },
    }
}

/// Held while a profile runs; dropping it (the request done or abandoned) frees the slot.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Samples the whole process for `seconds` and returns the gzip'd profile. If the request is
/// dropped while waiting, sampling stops with it.
pub async fn profile(seconds: u64) -> Result<Vec<u8>, CpuError> {
    let slot = Slot::take().ok_or(CpuError::Busy)?;
    // Starting the profiler resolves a first backtrace and lists the loaded libraries, which
    // reads the binary's debug info (seconds, the first time): kept off the runtime's threads.
    let started = tokio::task::spawn_blocking(move || {
        let cpu_before = process_cpu();
        pprof::ProfilerGuardBuilder::default()
            .frequency(HZ)
            .blocklist(&BLOCKLIST)
            .build()
            .map(|guard| {
                forget_debug_info();
                (guard, cpu_before)
            })
            .map_err(|e| CpuError::Profiler(e.to_string()))
    });
    let (guard, cpu_before) = joined(started.await)??;
    crate::timer::sleep(Duration::from_secs(seconds)).await;
    let done = tokio::task::spawn_blocking(move || {
        let cpu_used = process_cpu()
            .zip(cpu_before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1));
        let report = guard.report().build();
        drop(guard);
        forget_debug_info();
        drop(slot);
        let report = report.map_err(|e| CpuError::Profiler(e.to_string()))?;
        encode_cpu(&convert(&report, cpu_used)).map_err(|e| CpuError::Profiler(e.to_string()))
    });
    joined(done.await)?
}

/// Resolving names parses the binary's debug info into a cache that holds some 200 MB for
/// the release binary and is kept for good; a proxy that is profiled now and then should not
/// carry it, so it is dropped after each use and the freed memory handed back to the system.
fn forget_debug_info() {
    backtrace::clear_symbol_cache();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, CpuError> {
    r.map_err(|e| CpuError::Profiler(format!("the profiler's task failed: {e}")))
}

/// (user, system) CPU seconds this process has used, from /proc/self/stat.
fn process_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, _, user, system) = super::process::parse_stat(&stat)?;
    let ticks = super::process::clock_ticks();
    Some((user as f64 / ticks, system as f64 / ticks))
}

/// The crate's report as the encoder's input, without the profiler's own frames on top.
/// `cpu_used` is the process's (user, system) CPU seconds over the same time, for the comment
/// that says how much of it the samples cover.
fn convert(report: &pprof::Report, cpu_used: Option<(f64, f64)>) -> CpuReport {
    let stacks = report
        .data
        .iter()
        .map(|(frames, &count)| {
            let resolved: Vec<Frame> = frames
                .frames
                .iter()
                .map(|symbols| {
                    symbols
                        .iter()
                        .map(|s| {
                            let file = s.filename().into_owned();
                            (
                                qualified(s.name(), &file),
                                s.sys_name().into_owned(),
                                file,
                                i64::from(s.lineno()),
                            )
                        })
                        .collect()
                })
                .collect();
            (
                without_handler(resolved),
                frames.thread_name_or_id(),
                count as i64,
            )
        })
        .collect();
    let timing = &report.timing;
    CpuReport {
        stacks,
        hz: i64::from(timing.frequency),
        start_unix_nanos: timing
            .start_time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        duration_nanos: timing.duration.as_nanos() as i64,
        comment: comment(timing.frequency, cpu_used),
    }
}

fn comment(hz: i32, cpu_used: Option<(f64, f64)>) -> String {
    let mut c = format!(
        "tiproxy {} CPU profile: SIGPROF sampling at {hz} Hz. Samples that land in libc, \
         libpthread, libgcc or the vDSO (system calls, clock reads) are dropped, since \
         unwinding there can deadlock: kernel time spent in system calls is not in this profile.",
        crate::version::VERSION
    );
    if let Some((user, system)) = cpu_used {
        c.push_str(&format!(
            " The process used {user:.2} s user and {system:.2} s system CPU meanwhile."
        ));
    }
    c
}

/// A name with its source file's tail when the name alone says little. The release build keeps
/// line tables only, whose inlined functions carry bare names (`poll`, `{closure#0}`); the
/// file tells whose they are.
fn qualified(name: String, file: &str) -> String {
    if name.contains("::") || file.is_empty() || file == "Unknown" {
        return name;
    }
    let parts: Vec<&str> = file.rsplit('/').take(3).collect();
    let tail: Vec<&str> = parts.into_iter().rev().collect();
    format!("{name} [{}]", tail.join("/"))
}

/// Drops the frames of the sampler itself (the signal handler, the unwinder and the signal
/// trampoline) from the top of a stack, so the profile starts at the interrupted code.
fn without_handler(mut frames: Vec<Frame>) -> Vec<Frame> {
    let is_sampler = |f: &Frame| {
        !f.is_empty()
            && f.iter().all(|(name, _, _, _)| {
                let name = name.trim_start_matches('<');
                name.starts_with("backtrace::")
                    || name.starts_with("pprof::")
                    || name.contains("perf_signal_handler")
                    || name.contains("__restore_rt")
            })
    };
    let sampler = frames.iter().take_while(|f| is_sampler(f)).count();
    frames.drain(..sampler);
    if frames.is_empty() {
        // The unwinder stopped at the signal frame: the CPU time is real, its code unknown (Go
        // names such samples after a pseudo-function too).
        frames.push(vec![(UNWOUND.into(), UNWOUND.into(), String::new(), 0)]);
    }
    frames
}

/// The one frame of a sample whose stack could not be unwound past the sampler.
const UNWOUND: &str = "(stack not unwound)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_bounds_and_refusals() {
        assert_eq!(parse_seconds(None).unwrap(), DEFAULT_SECONDS);
        assert_eq!(parse_seconds(Some("debug=1")).unwrap(), DEFAULT_SECONDS);
        assert_eq!(parse_seconds(Some("seconds=")).unwrap(), DEFAULT_SECONDS);
        assert_eq!(parse_seconds(Some("seconds=5")).unwrap(), 5);
        for bad in ["0", "301", "-1", "1.5", "ten"] {
            assert!(
                parse_seconds(Some(&format!("seconds={bad}"))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_sampler_frames_are_cut_from_the_top() {
        let f = |n: &str| vec![(n.to_string(), String::new(), String::new(), 0)];
        let stack = vec![
            f("backtrace::backtrace::libunwind::trace"),
            f("<pprof::backtrace::backtrace_rs::Trace as pprof::backtrace::Trace>::trace"),
            f("pprof::profiler::perf_signal_handler"),
            f("__restore_rt"),
            f("tiproxy::relay"),
            f("main"),
        ];
        let kept = without_handler(stack);
        assert_eq!(kept, vec![f("tiproxy::relay"), f("main")]);
        assert_eq!(without_handler(vec![f("main")]), vec![f("main")]);
        let only_sampler = vec![
            f("backtrace::trace"),
            f("pprof::profiler::perf_signal_handler"),
        ];
        let kept = without_handler(only_sampler);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0][0].0, UNWOUND);
        // Only the top of the stack is the sampler's.
        let deeper = vec![f("tiproxy::x"), f("backtrace::capture"), f("main")];
        assert_eq!(without_handler(deeper.clone()), deeper);
    }

    #[test]
    fn bare_names_get_their_file() {
        let file = "/home/u/tiproxy/src/proxy/relay.rs";
        assert_eq!(qualified("poll".into(), file), "poll [src/proxy/relay.rs]");
        assert_eq!(
            qualified("tiproxy::x::poll".into(), file),
            "tiproxy::x::poll"
        );
        assert_eq!(qualified("poll".into(), "Unknown"), "poll");
        assert_eq!(qualified("poll".into(), "lib.rs"), "poll [lib.rs]");
    }

    #[test]
    fn a_second_slot_is_refused_until_the_first_is_dropped() {
        let first = Slot::take().expect("free at first");
        assert!(Slot::take().is_none());
        drop(first);
        assert!(Slot::take().is_some());
    }
}
