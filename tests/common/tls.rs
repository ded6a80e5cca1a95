//! Self-signed certificates and RSA keys written into a test's temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Paths of a PEM certificate and its private key.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed certificate for localhost/127.0.0.1; clients in the tests skip verification.
pub fn self_signed(dir: &Path, name: &str) -> CertFiles {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    CertFiles { cert, key }
}

/// A 2048-bit RSA key in PKCS#8 PEM. Made by the openssl CLI because generating it with the
/// `rsa` crate in an unoptimised test build takes far longer than the tests themselves.
pub fn rsa_private_pem(dir: &Path) -> String {
    let path = dir.join("rsa-key.pem");
    let out = super::cli::run(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path),
        Duration::from_secs(60),
    );
    assert!(out.ok(), "openssl genpkey: {out:?}");
    std::fs::read_to_string(&path).expect("read rsa key")
}
