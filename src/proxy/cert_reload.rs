//! Certificate rotation without a restart: a server certificate resolver that re-reads its
//! cert/key files when their modification times change, checked at most every
//! [`CHECK_EVERY`] on a TLS handshake, so sessions already open keep their connections and
//! new handshakes get the new certificate. A half-written pair that does not load keeps
//! the previous one (and says so in the log) until a later check loads it.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often the files' modification times are looked at (TiProxy checks periodically too).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

type Stamp = (Option<SystemTime>, Option<SystemTime>);

#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: String,
    key_path: String,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Stamp>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last look at the files.
    checked_ms: AtomicU64,
}

fn stamp_of(cert: &str, key: &str) -> Stamp {
    let mtime = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

impl ReloadingCert {
    /// Loads the pair now; an error here is a startup error.
    pub fn new(
        cert_path: &str,
        key_path: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, super::tls::TlsSetupError> {
        let stamp = stamp_of(cert_path, key_path);
        let key = load(cert_path, key_path, &provider)?;
        Ok(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(stamp),
            epoch: Instant::now(),
            checked_ms: AtomicU64::new(0),
        })
    }

    /// Re-reads the files if they changed since the last load; at most every CHECK_EVERY.
    pub fn check(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < CHECK_EVERY.as_millis() as u64
            || self
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let now = stamp_of(&self.cert_path, &self.key_path);
        let mut stamp = self.stamp.lock().expect("cert stamp");
        if *stamp == now {
            return;
        }
        match load(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                *self.current.write().expect("cert") = Arc::new(key);
                *stamp = now;
                tracing::info!(cert = %self.cert_path, key = %self.key_path, "TLS certificate reloaded: new handshakes use it, open connections keep theirs");
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert_path, error = %e, "TLS certificate files changed but do not load; still serving the previous certificate")
            }
        }
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("cert").clone()
    }
}

fn load(
    cert: &str,
    key: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, super::tls::TlsSetupError> {
    let certs = super::tls::load_certs(cert)?;
    let key = super::tls::load_key(key)?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.check();
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.check();
        Some(self.current())
    }
}

/// Something built from a CA file (a verifier), rebuilt when the file changes: checked at most
/// every [`CHECK_EVERY`] on a handshake. A CA file that changed but does not load keeps the
/// previous one (and says so), so a half-written file never turns verification off.
pub struct ReloadingCa<T: ?Sized> {
    path: String,
    build: fn(&str, &Arc<CryptoProvider>) -> Result<Arc<T>, super::tls::TlsSetupError>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<T>>,
    stamp: Mutex<Option<SystemTime>>,
    epoch: Instant,
    checked_ms: AtomicU64,
}

impl<T: ?Sized> std::fmt::Debug for ReloadingCa<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCa")
            .field("path", &self.path)
            .finish()
    }
}

impl<T: ?Sized> ReloadingCa<T> {
    /// Builds from the file now; an error here is a startup error.
    pub fn new(
        path: &str,
        provider: Arc<CryptoProvider>,
        build: fn(&str, &Arc<CryptoProvider>) -> Result<Arc<T>, super::tls::TlsSetupError>,
    ) -> Result<Self, super::tls::TlsSetupError> {
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let first = build(path, &provider)?;
        Ok(ReloadingCa {
            path: path.to_owned(),
            build,
            provider,
            current: RwLock::new(first),
            stamp: Mutex::new(stamp),
            epoch: Instant::now(),
            checked_ms: AtomicU64::new(0),
        })
    }

    /// The current build, after re-reading the file if it changed (at most every CHECK_EVERY).
    pub fn current(&self) -> Arc<T> {
        self.check();
        self.current.read().expect("ca").clone()
    }

    fn check(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < CHECK_EVERY.as_millis() as u64
            || self
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut stamp = self.stamp.lock().expect("ca stamp");
        if *stamp == now {
            return;
        }
        match (self.build)(&self.path, &self.provider) {
            Ok(next) => {
                *self.current.write().expect("ca") = next;
                *stamp = now;
                tracing::info!(ca = %self.path, "TLS CA reloaded: new handshakes verify against it");
            }
            Err(e) => {
                tracing::warn!(ca = %self.path, error = %e, "TLS CA file changed but does not load; still verifying against the previous one")
            }
        }
    }
}

/// The client-certificate verifier of `server-tls`/`server-http-tls`, rebuilt when its CA file
/// changes. No CA names are hinted to clients (the hint would borrow from a verifier that may
/// be replaced); clients send the certificate they are configured with either way.
#[derive(Debug)]
pub struct ReloadingClientVerifier(pub ReloadingCa<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.current().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.current().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.current().supported_verify_schemes()
    }
}
