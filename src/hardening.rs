//! Process hardening at start: no core dumps, which would write every password and password
//! hash the proxy holds (in flight or in its config) to disk.

/// Sets the core-file size limit to zero. Failure is logged, not fatal: some sandboxes
/// forbid changing limits, and the proxy works without this.
pub fn disable_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass and touches nothing else.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot disable core dumps");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_limit_is_zero_afterwards() {
        super::disable_core_dumps();
        let mut lim = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, 0);
    }
}
