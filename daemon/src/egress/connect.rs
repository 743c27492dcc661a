//! Opening a connection to a domain's MX hosts under the TLS policy the
//! domain publishes: the hosts its MTA-STS policy names, the certificate
//! its DANE records or that policy ask for, each session counted for the
//! domain's TLS report.

use super::client::{ClientError, Connection, TlsFailure, TlsMode};
use super::line::Line;
use super::worker::ConnectFailure;
use super::{Delivery, dane, mta_sts};
use crate::queue::outcome::Verdict;
use crate::tls::ClientConfigs;
use std::net::SocketAddr;
use std::sync::Arc;

impl Delivery {
    /// The MTA-STS policy of `domain` (`enforce` or `testing`), if any.
    pub(super) async fn sts_policy(&self, domain: &str) -> Option<Arc<mta_sts::Policy>> {
        match self.mta_sts.as_ref()?.policy_for(domain).await {
            mta_sts::Found::Policy(p) if p.mode != mta_sts::Mode::None => Some(p),
            _ => None,
        }
    }

    /// Tries each MX of the line's site in order (those an enforced
    /// `policy` names), each of its addresses, until one answers, from
    /// the line's source.
    pub(super) async fn connect(
        &self,
        line: &Line,
        domain: &str,
        require_tls: bool,
        policy: Option<&mta_sts::Policy>,
    ) -> Result<Connection, ConnectFailure> {
        let sts = policy.filter(|p| p.mode == mta_sts::Mode::Enforce);
        let all = line.hosts();
        let hosts: Vec<&crate::dns::MxHost> = all
            .iter()
            .filter(|h| sts.is_none_or(|p| p.permits(&h.name)))
            .collect();
        if let Some(p) = sts
            && hosts.is_empty()
        {
            return Err(ConnectFailure::temporary(
                format!(
                    "{} of {domain} names none of its MX hosts ({}): not delivered",
                    p.describe(),
                    all.iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "4.7.5",
            ));
        }
        let d = &self.settings.delivery;
        let mode = if require_tls {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        };
        let source = line.source.address;
        let helo = &line.source.ehlo;
        let mut errors = Vec::new();
        // DANE applies to the MX hosts of a domain whose MX records are
        // secure (RFC 7672 2.2.1).
        let dane = match &self.dane {
            Some(dns) if !domain.starts_with('[') => match dns.mx_secure(domain).await {
                Ok(true) => Some(dns),
                Ok(false) => None,
                Err(e) => {
                    return Err(ConnectFailure::temporary(
                        format!("DNSSEC lookup for DANE failed: {e}"),
                        "4.7.5",
                    ));
                }
            },
            _ => None,
        };
        let mut dane_applied = false;
        for host in hosts.iter() {
            let (mode, tls, under_dane) = match dane {
                Some(dns) => match dns.tlsa(&host.name, d.mx_port).await {
                    Ok(dane::Dane::None) => (mode, self.tls.clone(), false),
                    Ok(dane::Dane::Usable(records)) => {
                        match dane::DaneVerifier::client_config(records, crate::tls::provider()) {
                            Ok(verified) => (
                                TlsMode::Required,
                                ClientConfigs {
                                    opportunistic: self.tls.opportunistic.clone(),
                                    verified,
                                },
                                true,
                            ),
                            Err(e) => {
                                errors.push(format!("{}: DANE: {e}", host.name));
                                continue;
                            }
                        }
                    }
                    // Secure records, none usable: encrypted, unchecked.
                    Ok(dane::Dane::Unusable) => (
                        TlsMode::Required,
                        ClientConfigs {
                            opportunistic: self.tls.opportunistic.clone(),
                            verified: self.tls.opportunistic.clone(),
                        },
                        true,
                    ),
                    Err(e) => {
                        dane_applied = true;
                        // No session: the domain's report counts the
                        // lookup that kept it from one.
                        super::tls_report::count(
                            &self.store,
                            &super::tls_report::Session {
                                domain,
                                policy: None,
                                dane: true,
                                sts_failed: false,
                                mx: &host.name,
                                result: "dnssec-invalid",
                            },
                        );
                        errors.push(format!("{}: {e}", host.name));
                        continue;
                    }
                },
                None => (mode, self.tls.clone(), false),
            };
            dane_applied |= under_dane;
            // Under an MTA-STS `testing` policy the certificate is checked
            // for the domain's report, and the mail goes as without it.
            let testing = !under_dane
                && mode == TlsMode::Opportunistic
                && policy.is_some_and(|p| p.mode == mta_sts::Mode::Testing);
            let tls = if testing {
                ClientConfigs {
                    opportunistic: self.tls.verified.clone(),
                    verified: self.tls.verified.clone(),
                }
            } else {
                tls
            };
            for ip in host.addrs.iter().take(4) {
                let addr = SocketAddr::new(*ip, d.mx_port);
                let opened = Connection::open(
                    &host.name,
                    addr,
                    source,
                    helo,
                    mode,
                    &tls,
                    d.connect_timeout,
                )
                .await;
                self.count_tls_session(domain, &host.name, policy, under_dane, opened.as_ref());
                let opened = match opened {
                    Err(ClientError::Tls(e))
                        if testing && e.kind != TlsFailure::StarttlsNotSupported =>
                    {
                        tracing::info!(mx = %host.name, %addr, error = %e, "TLS fails the domain's MTA-STS testing policy; delivering as without it");
                        Connection::open(
                            &host.name,
                            addr,
                            source,
                            helo,
                            mode,
                            &self.tls,
                            d.connect_timeout,
                        )
                        .await
                    }
                    other => other,
                };
                let opened = match opened {
                    Err(ClientError::Tls(e)) if mode == TlsMode::Opportunistic => {
                        tracing::info!(mx = %host.name, %addr, error = %e, "STARTTLS failed, retrying in plain text");
                        Connection::open(
                            &host.name,
                            addr,
                            source,
                            helo,
                            TlsMode::Disabled,
                            &self.tls,
                            d.connect_timeout,
                        )
                        .await
                    }
                    other => other,
                };
                match opened {
                    Ok(mut c) => {
                        c.dane = under_dane;
                        return Ok(c);
                    }
                    Err(ClientError::Source(ip, e)) => {
                        return Err(ConnectFailure {
                            verdict: Verdict::Temporary,
                            text: format!("source address {ip}: {e}"),
                            enhanced: Some("4.4.1".into()),
                            reply: None,
                            source_broken: true,
                        });
                    }
                    Err(ClientError::Rejected(reply)) if hosts.len() == 1 => {
                        let verdict = if reply.is_permanent() {
                            Verdict::Permanent
                        } else {
                            Verdict::Temporary
                        };
                        return Err(ConnectFailure {
                            verdict,
                            text: format!(
                                "{} ({}) refused the connection: {reply}",
                                host.name, addr
                            ),
                            enhanced: reply.enhanced.clone(),
                            reply: Some(reply),
                            source_broken: false,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(mx = %host.name, %addr, error = %e, "MX unreachable");
                        let why = if under_dane {
                            " (DANE: TLS with a certificate its TLSA records match)"
                        } else {
                            ""
                        };
                        errors.push(format!("{} ({addr}): {e}{why}", host.name));
                    }
                }
            }
        }
        // Perhaps the MX hosts changed: ask DNS again next time.
        self.routes.forget(&domain.to_ascii_lowercase());
        let (why, enhanced) = match sts {
            Some(p) => (
                format!(" (as {} requires, over verified TLS)", p.describe()),
                "4.7.5",
            ),
            None if dane_applied => (" (as DANE requires)".to_string(), "4.7.5"),
            None => (String::new(), "4.4.1"),
        };
        Err(ConnectFailure::temporary(
            format!(
                "no MX of {domain} accepted a connection{why}: {}",
                errors.join("; ")
            ),
            enhanced,
        ))
    }
}

impl Delivery {
    /// A connection's TLS, counted by the policy that applied (bounded
    /// labels: RFC 8460's result types) and for `domain`'s TLS report.
    pub(super) fn count_tls_session(
        &self,
        domain: &str,
        mx: &str,
        policy: Option<&mta_sts::Policy>,
        dane: bool,
        opened: Result<&Connection, &ClientError>,
    ) {
        let result = match opened {
            Ok(c) if c.tls_version.is_some() => "success",
            Ok(_) => "plaintext",
            Err(ClientError::Tls(e)) => e.kind.result_type(),
            Err(_) => return,
        };
        if let Some(m) = crate::metrics::get() {
            m.tls_sessions
                .get_or_create(&crate::metrics::TlsSession {
                    policy: if dane {
                        "dane"
                    } else if policy.is_some() {
                        "mta-sts"
                    } else {
                        "none"
                    },
                    result,
                })
                .inc();
        }
        // To a report, mail that went in plain text is an MX without
        // STARTTLS; a session that went well for a domain whose policy
        // could not be had failed that way.
        let sts_failure = self.mta_sts.as_ref().and_then(|m| m.failure_for(domain));
        let result = match (result, sts_failure) {
            ("success", Some(why)) if !dane => why,
            ("plaintext", _) => "starttls-not-supported",
            (result, _) => result,
        };
        super::tls_report::count(
            &self.store,
            &super::tls_report::Session {
                domain,
                policy: policy.filter(|_| !dane),
                sts_failed: sts_failure.is_some() && !dane,
                dane,
                mx,
                result,
            },
        );
    }
}

/// How an attempt under DANE names its TLS policy.
pub(super) const DANE: &str = "DANE";
