//! HTTP basic auth for the status port's admin and view paths.

use base64::Engine;

/// Whether an `Authorization` header value carries exactly these credentials.
pub fn allows(header: Option<&str>, user: &str, password: &str) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{user}:{password}");
    constant_time_eq(&raw, expected.as_bytes())
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_user_and_password() {
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:pw")
        );
        assert!(allows(Some(&good), "admin", "pw"));
        assert!(!allows(Some(&good), "admin", "other"));
        assert!(!allows(Some("Basic !!!"), "admin", "pw"));
        assert!(!allows(None, "admin", "pw"));
    }
}
