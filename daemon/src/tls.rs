//! TLS configuration: the server certificate (configured, or generated once
//! and kept in the data directory) and the two client policies used for
//! delivery: opportunistic (encrypt, accept any certificate, as RFC 7435
//! allows) and required (verify the chain and the MX host name).

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads the configured pair, or creates a self-signed one under `data_dir`.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    hostname: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let dir = data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
                let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
                    .map_err(|e| TlsError::Generate(e.to_string()))?;
                std::fs::write(&c, generated.cert.pem()).map_err(|e| file_err(&c, e))?;
                write_private(&k, generated.signing_key.serialize_pem().as_bytes())?;
                tracing::info!(cert = %c.display(), "generated a self-signed TLS certificate");
            }
            (c, k)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path, e))?;
    if certs.is_empty() {
        return Err(file_err(&cert_path, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(bytes).map_err(|e| file_err(path, e))
}

#[derive(Clone)]
pub struct ClientConfigs {
    pub opportunistic: Arc<rustls::ClientConfig>,
    pub verified: Arc<rustls::ClientConfig>,
}

/// The verifying configuration trusts Mozilla's roots (built in, so a host
/// without a CA bundle still verifies), the platform's store (with the
/// CAs an operator added to it: `update-ca-certificates`), and
/// `extra_ca` (`delivery.tls_ca_file`).
pub fn client_configs(extra_ca: Option<&Path>) -> Result<ClientConfigs, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let platform = rustls_native_certs::load_native_certs();
    for e in &platform.errors {
        tracing::debug!(error = %e, "a certificate of the platform's store could not be read");
    }
    let (_added, _skipped) = roots.add_parsable_certificates(platform.certs);
    if let Some(path) = extra_ca {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_err(path, e))? {
            roots
                .add(cert.map_err(|e| file_err(path, e))?)
                .map_err(|e| file_err(path, e))?;
        }
    }
    let verified = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let opportunistic = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    Ok(ClientConfigs {
        opportunistic: Arc::new(opportunistic),
        verified: Arc::new(verified),
    })
}

/// Opportunistic TLS: encryption against passive listeners, no authentication.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The SMTP listeners' TLS (`smtp.tls_cert`, or a certificate Kiln makes
/// for itself).
pub fn smtp_acceptor(settings: &crate::config::Settings) -> anyhow::Result<TlsAcceptor> {
    let config = server_config(
        settings.smtp.tls_cert.as_deref(),
        settings.smtp.tls_key.as_deref(),
        &settings.server.data_dir,
        &settings.server.hostname,
    )
    .context("loading the SMTP TLS certificate")?;
    Ok(TlsAcceptor::from(config))
}

/// The HTTP listener's TLS, when `http.tls_cert` and `http.tls_key` are
/// set (HTTP/1.1 over TLS, as the SDKs speak it).
pub fn http_acceptor(settings: &crate::config::Settings) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&settings.http.tls_cert, &settings.http.tls_key) else {
        return Ok(None);
    };
    let config = server_config(
        Some(cert),
        Some(key),
        &settings.server.data_dir,
        &settings.server.hostname,
    )
    .context("loading the HTTP TLS certificate")?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
