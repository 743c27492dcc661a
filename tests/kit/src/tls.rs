//! Throwaway TLS material for test peers.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config presenting `chain` (leaf first), signed with `key`.
fn serving(chain: Vec<Vec<u8>>, key: Vec<u8>) -> Arc<rustls::ServerConfig> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .expect("server config");
    Arc::new(config)
}

/// A self-signed server config for `name`.
pub fn server_config(name: &str) -> Arc<rustls::ServerConfig> {
    self_signed_with_cert(name).0
}

/// A self-signed server config for `name`, and its certificate (DER).
pub fn self_signed_with_cert(name: &str) -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    let der = cert.cert.der().to_vec();
    (
        serving(vec![der.clone()], cert.signing_key.serialize_der()),
        der,
    )
}

/// Like [`ca_signed_server_config`], with the CA's certificate as DER.
pub fn ca_signed_with_ca_der(name: &str) -> (Vec<u8>, Arc<rustls::ServerConfig>) {
    let (ca_cert, leaf, leaf_key) = ca_and_leaf(&[name]);
    let config = serving(
        vec![leaf.der().to_vec(), ca_cert.der().to_vec()],
        leaf_key.serialize_der(),
    );
    (ca_cert.der().to_vec(), config)
}

/// A private CA's certificate and a leaf for `names` it signed (with the
/// leaf's key).
fn ca_and_leaf(names: &[&str]) -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    ca_and_leaf_valid(names, true)
}

/// [`ca_and_leaf`], the leaf expired a year ago unless `valid`.
fn ca_and_leaf_valid(
    names: &[&str],
    valid: bool,
) -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Kiln test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    if !valid {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf cert");
    (ca_cert, leaf, leaf_key)
}

/// A private CA and a server config for `name` with a certificate it
/// signed; returns the CA certificate as PEM, for the client to trust.
pub fn ca_signed_server_config(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    ca_signed_server_config_for(&[name])
}

/// Like [`ca_signed_server_config`], the certificate long expired.
pub fn ca_signed_expired_server_config(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let (ca_cert, leaf, leaf_key) = ca_and_leaf_valid(&[name], false);
    let config = serving(
        vec![leaf.der().to_vec(), ca_cert.der().to_vec()],
        leaf_key.serialize_der(),
    );
    (ca_cert.pem(), config)
}

/// Like [`ca_signed_server_config`], one certificate for all of `names`.
pub fn ca_signed_server_config_for(names: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    let (ca_cert, leaf, leaf_key) = ca_and_leaf(names);
    let config = serving(
        vec![leaf.der().to_vec(), ca_cert.der().to_vec()],
        leaf_key.serialize_der(),
    );
    (ca_cert.pem(), config)
}

/// A private CA and a certificate it signed for `names`, written to `dir`
/// as `ca.pem`, `cert.pem` (the leaf, then the CA) and `key.pem`; answers
/// their paths.
pub fn ca_signed_files(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (ca_cert, leaf, leaf_key) = ca_and_leaf(names);
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca, ca_cert.pem()).expect("ca.pem");
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca_cert.pem())).expect("cert.pem");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("key.pem");
    (ca, cert, key)
}

/// A client config that accepts any certificate (the peer is ours).
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    Arc::new(config)
}
