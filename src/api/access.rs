//! The status port's access rules. Open to anyone: health, metrics and the config with its
//! secrets redacted, and account names too unless the caller is an admin (TiUP, Prometheus
//! and TiDB read them without credentials). Every other
//! path needs `[api]` credentials, or, when none are set, a caller on this host. Requests
//! that change state must also come from a same-origin page (Origin, Sec-Fetch-Site) under a
//! Host name we know, which defeats cross-site requests and DNS rebinding from a browser.

use hyper::header::{HOST, ORIGIN};
use hyper::{HeaderMap, Method};
use std::net::IpAddr;

/// Paths any caller may GET.
pub fn is_open(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && matches!(
            path,
            "/api/debug/health" | "/api/metrics" | "/metrics" | "/api/admin/config"
        )
}

/// Methods that change state; the others only read.
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Loopback, including IPv4 clients of a dual-stack listener.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// Why a state-changing request is refused as cross-site, or None when it may proceed.
pub fn cross_site(headers: &HeaderMap, known_hosts: &[String]) -> Option<String> {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if matches!(site, "cross-site" | "same-site") {
            return Some(format!(
                "the request comes from another site (Sec-Fetch-Site: {site})"
            ));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let authority = origin.split_once("://").map(|(_, a)| a);
        let same = matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
        if !same {
            return Some(format!(
                "the request comes from the page origin {origin:?}, not from this status port"
            ));
        }
    }
    if let Some(h) = host {
        let name = host_name(h);
        if !host_allowed(&name, known_hosts) {
            return Some(format!(
                "the Host name {name:?} is not this proxy's; add it to [api] allowed-hosts if it is"
            ));
        }
    }
    None
}

/// The host part of a Host header: no port, no IPv6 brackets, lower case.
fn host_name(h: &str) -> String {
    let h = h.trim();
    let bare = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':').map_or(h, |(n, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                h
            }
        })
    };
    bare.trim_end_matches('.').to_ascii_lowercase()
}

/// IP literals cannot be rebound; `localhost` resolves locally; the rest must be known.
fn host_allowed(name: &str, known: &[String]) -> bool {
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || known.iter().any(|k| k.eq_ignore_ascii_case(name))
}

/// This machine's own names, accepted as Host without configuration.
pub fn local_names(advertise_addr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    if !advertise_addr.is_empty() {
        names.push(advertise_addr.to_ascii_lowercase());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_passes_and_cross_origin_does_not() {
        let known = vec!["proxy.internal".to_string()];
        assert!(cross_site(&headers(&[("host", "127.0.0.1:3080")]), &known).is_none());
        assert!(cross_site(
            &headers(&[
                ("host", "127.0.0.1:3080"),
                ("origin", "http://127.0.0.1:3080")
            ]),
            &known
        )
        .is_none());
        assert!(cross_site(
            &headers(&[
                ("host", "127.0.0.1:3080"),
                ("origin", "http://evil.example")
            ]),
            &known
        )
        .is_some());
        assert!(cross_site(
            &headers(&[("host", "127.0.0.1:3080"), ("origin", "null")]),
            &known
        )
        .is_some());
        assert!(cross_site(
            &headers(&[("host", "localhost:3080"), ("sec-fetch-site", "cross-site")]),
            &known
        )
        .is_some());
        // DNS rebinding: the page's own origin, under the attacker's name.
        assert!(cross_site(
            &headers(&[
                ("host", "rebind.evil.example:3080"),
                ("origin", "http://rebind.evil.example:3080")
            ]),
            &known
        )
        .is_some());
        assert!(cross_site(&headers(&[("host", "Proxy.Internal:3080")]), &known).is_none());
        assert!(cross_site(&headers(&[("host", "[::1]:3080")]), &known).is_none());
    }

    #[test]
    fn open_paths_and_locality() {
        assert!(is_open(&Method::GET, "/api/admin/config"));
        assert!(!is_open(&Method::PUT, "/api/admin/config"));
        assert!(!is_open(&Method::GET, "/api/connections"));
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_local("10.0.0.1".parse().unwrap()));
    }
}
