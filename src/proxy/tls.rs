//! rustls configurations built from `[security]`: the client-facing server side (files or
//! auto-generated certificates) and the backend-facing client side (CA, skip-ca, client cert).

use crate::config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path:?}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("invalid TLS settings: {0}")]
    Rustls(#[from] TlsError),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("unsupported min-tls-version {0:?}: use \"1.2\" or \"1.3\"")]
    Version(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(
    min: &str,
) -> Result<&'static [&'static rustls::SupportedProtocolVersion], TlsSetupError> {
    let v = min.trim().to_ascii_lowercase();
    let v = v.trim_start_matches("tls").trim_start_matches('v');
    match v {
        "" | "1.0" | "1.1" | "1.2" => Ok(rustls::ALL_VERSIONS),
        "1.3" => Ok(TLS13_ONLY),
        _ => Err(TlsSetupError::Version(min.to_owned())),
    }
}

pub(super) fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsSetupError::File {
            what: "certificate",
            path: path.into(),
            reason: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsSetupError::File {
        what: "certificate",
        path: path.into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsSetupError::File {
            what: "certificate",
            path: path.into(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

pub(super) fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsSetupError::File {
        what: "private key",
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Whether clients must present a certificate: a CA is configured and skip-ca is not set (as
/// TiProxy reads these keys; TiUP writes skip-ca = true beside the CA of the status port).
/// `cert-allowed-cn` makes a certificate mandatory even with skip-ca, as in TiProxy.
pub fn requires_client_cert(cfg: &TlsConfig) -> bool {
    cfg.enabled_for_server()
        && !cfg.ca.is_empty()
        && (!cfg.skip_ca || !cfg.cert_allowed_cn.is_empty())
}

/// `[security.sql-tls]` with a client certificate but neither a CA nor skip-ca encrypts to the
/// backends without checking who they are; say so once at start.
pub fn warn_unverified_backends(cfg: &TlsConfig) {
    if cfg.has_cert() && cfg.ca.is_empty() && !cfg.skip_ca {
        tracing::warn!("[security.sql-tls] has a cert but no ca: backend certificates are NOT verified (connections are encrypted only); set ca to verify them, or skip-ca = true to say this is intended");
    }
}

/// The server side for clients; `None` when TLS to clients is off. With a CA (and no
/// skip-ca), clients without a certificate that CA signed fail the handshake.
pub fn server_config(cfg: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    if !cfg.enabled_for_server() {
        return Ok(None);
    }
    let provider = provider();
    let files = if cfg.has_cert() {
        Some(Arc::new(super::cert_reload::ReloadingCert::new(
            &cfg.cert,
            &cfg.key,
            provider.clone(),
        )?))
    } else {
        None
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(&cfg.min_tls_version)?)?;
    let builder = if requires_client_cert(cfg) {
        // The CA file is re-read when it changes, as the certificates are.
        let verifier = Arc::new(super::cert_reload::ReloadingClientVerifier(
            super::cert_reload::ReloadingCa::new(&cfg.ca, provider, client_chain_verifier)?,
        ));
        if cfg.cert_allowed_cn.is_empty() {
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_client_cert_verifier(Arc::new(super::cert_cn::AllowedCnVerifier {
                inner: verifier,
                allowed: cfg.cert_allowed_cn.clone(),
            }))
        }
    } else {
        builder.with_no_client_auth()
    };
    // Files are re-read when they change (rotation without a restart); a generated
    // certificate lives as long as the process.
    let config = match files {
        Some(resolver) => builder.with_cert_resolver(resolver),
        None => {
            let (certs, key) = self_signed()?;
            builder.with_single_cert(certs, key)?
        }
    };
    Ok(Some(Arc::new(config)))
}

/// A certificate for `auto-certs`, valid for localhost.
fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    Ok((vec![ck.cert.der().clone()], key))
}

/// The client side for backends; `None` when TLS to backends is not configured.
pub fn client_config(cfg: &TlsConfig) -> Result<Option<Arc<rustls::ClientConfig>>, TlsSetupError> {
    if !cfg.enabled_for_client() {
        return Ok(None);
    }
    let provider = provider();
    // The CA file is re-read when it changes, as the certificates are.
    let chain = if cfg.skip_ca || cfg.ca.is_empty() {
        None
    } else {
        Some(super::cert_reload::ReloadingCa::new(
            &cfg.ca,
            provider.clone(),
            backend_chain_verifier,
        )?)
    };
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(BackendVerifier {
        chain,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(&cfg.min_tls_version)?)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // A client certificate (sql-tls) is re-read when its files change, as server ones are.
    let config = if cfg.has_cert() {
        builder.with_client_cert_resolver(Arc::new(super::cert_reload::ReloadingCert::new(
            &cfg.cert,
            &cfg.key,
            self::provider(),
        )?))
    } else {
        builder.with_no_client_auth()
    };
    Ok(Some(Arc::new(config)))
}

/// The client-certificate verifier of a server side, from its CA file.
fn client_chain_verifier(
    ca: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::General(e.to_string()).into())
}

/// The chain verifier for backends, from the `sql-tls` CA file.
fn backend_chain_verifier(
    ca: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::General(e.to_string()).into())
}

/// The name to present to a backend: its IP, or its host name.
pub fn server_name(addr: &str) -> ServerName<'static> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("static name"))
}

/// Verifies a backend's certificate. Without a CA (`skip-ca = true`) it only encrypts. With a
/// CA the chain must verify, but backends are dialled by IP and their certificates rarely name
/// it, so a name mismatch alone is accepted (as TiProxy does). Handshake signatures are always
/// checked.
#[derive(Debug)]
struct BackendVerifier {
    chain: Option<super::cert_reload::ReloadingCa<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BackendVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(chain) = self.chain.as_ref().map(|c| c.current()) else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_certs_build_a_server_config() {
        let cfg = TlsConfig {
            auto_certs: true,
            ..Default::default()
        };
        assert!(server_config(&cfg).unwrap().is_some());
        assert!(server_config(&TlsConfig::default()).unwrap().is_none());
    }

    #[test]
    fn missing_files_name_the_path() {
        let cfg = TlsConfig {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            ..Default::default()
        };
        let err = server_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn skip_ca_builds_a_client_config_and_names_parse() {
        let cfg = TlsConfig {
            skip_ca: true,
            ..Default::default()
        };
        assert!(client_config(&cfg).unwrap().is_some());
        assert!(matches!(
            server_name("127.0.0.1:3306"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:3306"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("db.local:3306"),
            ServerName::DnsName(_)
        ));
    }
}
