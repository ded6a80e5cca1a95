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
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(HZ)
        .blocklist(&BLOCKLIST)
        .build()
        .map_err(|e| CpuError::Profiler(e.to_string()))?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Resolving symbols reads the binary's debug info: seconds of CPU, kept off the runtime.
    let done = tokio::task::spawn_blocking(move || {
        let report = guard.report().build();
        drop(guard);
        drop(slot);
        let report = report.map_err(|e| CpuError::Profiler(e.to_string()))?;
        encode_cpu(&convert(&report)).map_err(|e| CpuError::Profiler(e.to_string()))
    });
    done.await
        .map_err(|e| CpuError::Profiler(format!("the symbolizing task failed: {e}")))?
}

/// The crate's report as the encoder's input, without the profiler's own frames on top.
fn convert(report: &pprof::Report) -> CpuReport {
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
                            (
                                s.name(),
                                s.sys_name().into_owned(),
                                s.filename().into_owned(),
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
        comment: format!(
            "tiproxy {} CPU profile: SIGPROF sampling at {} Hz",
            crate::version::VERSION,
            timing.frequency
        ),
    }
}

/// Drops the frames of the sampler itself (the signal handler, the unwinder and the signal
/// trampoline) from the top of a stack, so the profile starts at the interrupted code.
fn without_handler(mut frames: Vec<Frame>) -> Vec<Frame> {
    let is_sampler = |f: &Frame| {
        f.iter().any(|(name, _, _, _)| {
            name.contains("perf_signal_handler") || name.contains("__restore_rt")
        })
    };
    if let Some(last) = frames.iter().rposition(is_sampler) {
        frames.drain(..=last);
    }
    frames
}

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
            f("backtrace::trace_unsynchronized"),
            f("pprof::profiler::perf_signal_handler"),
            f("__restore_rt"),
            f("tiproxy::relay"),
            f("main"),
        ];
        let kept = without_handler(stack);
        assert_eq!(kept, vec![f("tiproxy::relay"), f("main")]);
        assert_eq!(without_handler(vec![f("main")]), vec![f("main")]);
    }

    #[test]
    fn a_second_slot_is_refused_until_the_first_is_dropped() {
        let first = Slot::take().expect("free at first");
        assert!(Slot::take().is_none());
        drop(first);
        assert!(Slot::take().is_some());
    }
}
