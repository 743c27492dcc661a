//! DANE for SMTP (RFC 7672), with `dns.dnssec = "resolver"`: Kiln trusts
//! the AD flag of the resolvers it is configured with (they must validate,
//! as a local unbound does), the way Postfix does.
//!
//! For an MX host of a domain whose MX records are secure, and whose own
//! address records are: usable `_25._tcp.HOST` TLSA records (DANE-EE `3`,
//! DANE-TA `2`; selectors 0/1; matching types 0/1/2) require TLS with a
//! certificate that matches them; records that are secure but none usable
//! require TLS, unchecked; a secure denial, or an answer that is not
//! secure, is no DANE; a lookup that fails (SERVFAIL: bogus or
//! unreachable) is a temporary failure, not a reason to go without.
//!
//! The queries go straight to the configured resolvers (UDP, TCP when the
//! answer is truncated) with the AD and DO bits set: the general resolver
//! neither asks for nor keeps the AD flag.

use aws_lc_rs::digest;
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What DANE asks of a connection to one MX host.
#[derive(Debug, Clone)]
pub enum Dane {
    /// Nothing: no secure TLSA records (or the MX or the host insecure).
    None,
    /// TLS, with a certificate that matches one of these records.
    Usable(Arc<Vec<TLSA>>),
    /// TLS, its certificate unchecked: secure records, none usable.
    Unusable,
}

/// An answer and whether the resolver vouched for it (AD).
struct Answer {
    code: ResponseCode,
    secure: bool,
    data: Vec<RData>,
}

/// Asks the configured resolvers for DNSSEC-validated answers.
pub struct SecureDns {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaneError {
    #[error("{0}: {1}")]
    Lookup(String, String),
    #[error("{0}: the resolver answered {1} (DNSSEC bogus or lookup failed)")]
    Failed(String, ResponseCode),
}

impl SecureDns {
    /// `nameservers` as `dns.nameservers` gives them; empty: those of
    /// /etc/resolv.conf.
    pub fn new(nameservers: &[String], timeout: Duration) -> SecureDns {
        let mut servers: Vec<SocketAddr> =
            nameservers.iter().filter_map(|n| n.parse().ok()).collect();
        if servers.is_empty() {
            servers = std::fs::read_to_string("/etc/resolv.conf")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .filter_map(|ip| ip.trim().parse().ok())
                .map(|ip| SocketAddr::new(ip, 53))
                .collect();
        }
        SecureDns { servers, timeout }
    }

    /// Whether `domain`'s MX records are secure.
    pub async fn mx_secure(&self, domain: &str) -> Result<bool, DaneError> {
        let a = self.query(domain, RecordType::MX).await?;
        Ok(a.secure && a.code == ResponseCode::NoError)
    }

    /// What DANE asks of a connection to `host` on `port`.
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Dane, DaneError> {
        // The host's addresses must be secure too (RFC 7672 2.2.2).
        let a = self.query(host, RecordType::A).await?;
        if a.code == ResponseCode::ServFail {
            return Err(DaneError::Failed(format!("A {host}"), a.code));
        }
        if !a.secure {
            return Ok(Dane::None);
        }
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let t = self.query(&name, RecordType::TLSA).await?;
        match t.code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => return Err(DaneError::Failed(format!("TLSA {name}"), code)),
        }
        if !t.secure {
            return Ok(Dane::None);
        }
        let records: Vec<TLSA> = t
            .data
            .into_iter()
            .filter_map(|d| match d {
                RData::TLSA(t) => Some(t),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Ok(Dane::None);
        }
        let usable: Vec<TLSA> = records.into_iter().filter(usable).collect();
        Ok(if usable.is_empty() {
            Dane::Unusable
        } else {
            Dane::Usable(Arc::new(usable))
        })
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, DaneError> {
        let what = format!("{rtype} {name}");
        let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
            .map_err(|e| DaneError::Lookup(what.clone(), e.to_string()))?;
        let mut q = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.metadata.authentic_data = true;
        q.add_query(Query::query(fqdn, rtype));
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        edns.set_max_payload(1232);
        q.set_edns(edns);
        let bytes = q
            .to_vec()
            .map_err(|e| DaneError::Lookup(what.clone(), e.to_string()))?;
        let mut last = String::from("no resolver configured");
        for server in &self.servers {
            match self.exchange(*server, &bytes, q.metadata.id).await {
                Ok(m) => {
                    return Ok(Answer {
                        code: m.metadata.response_code,
                        secure: m.metadata.authentic_data,
                        data: m
                            .answers
                            .into_iter()
                            .filter(|r| r.record_type() == rtype)
                            .map(|r| r.data)
                            .collect(),
                    });
                }
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(DaneError::Lookup(what, last))
    }

    /// One query to `server`: UDP, then TCP if the answer was truncated.
    async fn exchange(&self, server: SocketAddr, q: &[u8], id: u16) -> Result<Message, String> {
        let udp = async {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0".parse().map_err(|_| "bind")?
            } else {
                "[::]:0".parse().map_err(|_| "bind")?
            };
            let socket = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| e.to_string())?;
            socket.connect(server).await.map_err(|e| e.to_string())?;
            socket.send(q).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
                if let Ok(m) = Message::from_vec(&buf[..n])
                    && m.metadata.id == id
                {
                    return Ok::<Message, String>(m);
                }
            }
        };
        let m = tokio::time::timeout(self.timeout, udp)
            .await
            .map_err(|_| "timed out".to_string())??;
        if !m.metadata.truncation {
            return Ok(m);
        }
        let tcp = async {
            let mut s = tokio::net::TcpStream::connect(server)
                .await
                .map_err(|e| e.to_string())?;
            s.write_u16(q.len() as u16)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(q).await.map_err(|e| e.to_string())?;
            let len = s.read_u16().await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; len as usize];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Message::from_vec(&buf).map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.timeout, tcp)
            .await
            .map_err(|_| "timed out over TCP".to_string())?
    }
}

/// A record RFC 7672 lets SMTP use: DANE-TA or DANE-EE, a known selector
/// and matching type.
fn usable(t: &TLSA) -> bool {
    matches!(t.cert_usage, CertUsage::DaneTa | CertUsage::DaneEe)
        && matches!(t.selector, Selector::Full | Selector::Spki)
        && matches!(
            t.matching,
            Matching::Raw | Matching::Sha256 | Matching::Sha512
        )
}

/// Whether `cert` (DER, or any bytes) is what the TLSA record `usage
/// selector matching record` describes (for the fuzz target).
pub fn certificate_matches(
    usage: u8,
    selector: u8,
    matching: u8,
    record: &[u8],
    cert: &[u8],
) -> bool {
    let t = TLSA::new(
        CertUsage::from(usage),
        Selector::from(selector),
        Matching::from(matching),
        record.to_vec(),
    );
    usable(&t) && matches(&t, cert)
}

/// Whether `cert` (DER) is what `t` describes.
fn matches(t: &TLSA, cert: &[u8]) -> bool {
    let selected: Vec<u8> = match t.selector {
        Selector::Full => cert.to_vec(),
        Selector::Spki => match x509_parser::parse_x509_certificate(cert) {
            Ok((_, c)) => c.tbs_certificate.subject_pki.raw.to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    let data = match t.matching {
        Matching::Raw => selected,
        Matching::Sha256 => digest::digest(&digest::SHA256, &selected).as_ref().to_vec(),
        Matching::Sha512 => digest::digest(&digest::SHA512, &selected).as_ref().to_vec(),
        _ => return false,
    };
    data == t.cert_data
}

/// Verifies a server's certificate against its TLSA records: DANE-EE
/// matches the server's own certificate (its names and dates do not
/// matter, RFC 7672 3.1.1); DANE-TA a certificate of the chain it sent,
/// which must then issue the server's, valid for the MX host's name.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Arc<Vec<TLSA>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// The certificate matched none of the TLSA records.
#[derive(Debug)]
struct NoMatch(String);

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoMatch {}

impl DaneVerifier {
    /// A client configuration that accepts only what `records` allow.
    pub fn client_config(
        records: Arc<Vec<TLSA>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let verifier = Arc::new(DaneVerifier {
            records,
            provider: provider.clone(),
        });
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        ))
    }

    fn trust_anchor_verifies(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(anchor.clone().into_owned()).is_err() {
            return false;
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .is_ok_and(|v| {
            v.verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .is_ok()
        })
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        for t in self.records.iter() {
            match t.cert_usage {
                CertUsage::DaneEe if matches(t, end_entity) => {
                    return Ok(ServerCertVerified::assertion());
                }
                CertUsage::DaneTa => {
                    for anchor in intermediates.iter().filter(|c| matches(t, c)) {
                        if self.trust_anchor_verifies(
                            anchor,
                            end_entity,
                            intermediates,
                            server_name,
                            now,
                        ) {
                            return Ok(ServerCertVerified::assertion());
                        }
                    }
                }
                _ => {}
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NoMatch(format!(
                "the certificate matches none of the {} TLSA records (DANE)",
                self.records.len()
            ))))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(usage: CertUsage, selector: Selector, matching: Matching, data: Vec<u8>) -> TLSA {
        TLSA::new(usage, selector, matching, data)
    }

    #[test]
    fn records_match_by_selector_and_matching_type() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let sha256 = |b: &[u8]| digest::digest(&digest::SHA256, b).as_ref().to_vec();
        let sha512 = |b: &[u8]| digest::digest(&digest::SHA512, b).as_ref().to_vec();
        for (selector, matching, data) in [
            (Selector::Full, Matching::Raw, der.clone()),
            (Selector::Full, Matching::Sha256, sha256(&der)),
            (Selector::Full, Matching::Sha512, sha512(&der)),
            (Selector::Spki, Matching::Raw, spki.clone()),
            (Selector::Spki, Matching::Sha256, sha256(&spki)),
            (Selector::Spki, Matching::Sha512, sha512(&spki)),
        ] {
            let mut t = record(CertUsage::DaneEe, selector, matching, data);
            assert!(matches(&t, &der), "{selector:?} {matching:?}");
            t.cert_data[0] ^= 1;
            assert!(!matches(&t, &der), "{selector:?} {matching:?} altered");
        }
        // PKIX usages are not for SMTP (RFC 7672 3.1.3).
        assert!(!usable(&record(
            CertUsage::PkixEe,
            Selector::Spki,
            Matching::Sha256,
            sha256(&spki)
        )));
        assert!(usable(&record(
            CertUsage::DaneTa,
            Selector::Full,
            Matching::Sha256,
            sha256(&der)
        )));
    }
}
