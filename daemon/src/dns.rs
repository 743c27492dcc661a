//! Where mail for a domain goes: MX records in preference order (equal
//! preferences shuffled), the implicit MX of RFC 5321 section 5.1 when there
//! is none, and the null MX of RFC 7505 as a permanent failure.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MxHost {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The domain can never receive mail: bounce.
    #[error("{enhanced} {text}")]
    Permanent {
        enhanced: &'static str,
        text: String,
    },
    /// DNS trouble: try again later.
    #[error("4.4.3 {0}")]
    Temporary(String),
}

#[derive(Debug, thiserror::Error)]
#[error("resolver: {0}")]
pub struct ResolverSetupError(String);

#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// `nameservers` as `ip:port`; empty uses the system configuration.
    pub fn new(
        nameservers: &[String],
        timeout: Duration,
    ) -> Result<MxResolver, ResolverSetupError> {
        Self::build(nameservers, timeout, true)
    }

    /// A resolver that asks every time (for checks an operator is waiting
    /// on, e.g. a sender domain's records just published).
    pub fn new_uncached(
        nameservers: &[String],
        timeout: Duration,
    ) -> Result<MxResolver, ResolverSetupError> {
        Self::build(nameservers, timeout, false)
    }

    fn build(
        nameservers: &[String],
        timeout: Duration,
        cache: bool,
    ) -> Result<MxResolver, ResolverSetupError> {
        let mut opts = ResolverOpts::default();
        if !cache {
            opts.cache_size = 0;
        }
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.ndots = 0;
        let builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolverSetupError(e.to_string()))?
        } else {
            let mut servers = Vec::new();
            for ns in nameservers {
                let addr: SocketAddr = ns
                    .parse()
                    .map_err(|_| ResolverSetupError(format!("bad nameserver {ns:?}")))?;
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(|e| ResolverSetupError(e.to_string()))?;
        Ok(MxResolver { resolver })
    }

    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The TXT records of `name`, each as one string (its parts joined);
    /// none when the name has none or does not exist; an error when DNS
    /// did not answer.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn).await {
            Ok(found) => Ok(found
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn route(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr =
                literal
                    .trim_start_matches("IPv6:")
                    .parse()
                    .map_err(|_| RouteError::Permanent {
                        enhanced: "5.1.2",
                        text: format!("bad address literal {domain}"),
                    })?;
            return Ok(vec![MxHost {
                name: domain.to_string(),
                addrs: vec![ip],
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut records: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_utf8())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(RouteError::Permanent {
                    enhanced: "5.1.2",
                    text: format!("domain {domain} does not exist"),
                });
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(RouteError::Temporary(format!(
                    "MX lookup for {domain}: {e}"
                )));
            }
        };
        if records.len() == 1 && (records[0].1 == "." || records[0].1.is_empty()) {
            return Err(RouteError::Permanent {
                enhanced: "5.1.10",
                text: format!("domain {domain} accepts no mail (null MX)"),
            });
        }
        if records.is_empty() {
            // Implicit MX: the domain itself.
            let addrs = self.addresses(&fqdn).await?;
            if addrs.is_empty() {
                return Err(RouteError::Permanent {
                    enhanced: "5.1.2",
                    text: format!("domain {domain} has no MX and no A/AAAA record"),
                });
            }
            return Ok(vec![MxHost {
                name: domain.to_string(),
                addrs,
            }]);
        }
        records.shuffle(&mut rand::rng());
        records.sort_by_key(|(pref, _)| *pref);
        let mut hosts = Vec::new();
        let mut last_error = None;
        for (_, name) in records {
            if name == "." {
                continue;
            }
            match self.addresses(&name).await {
                Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost {
                    name: name.trim_end_matches('.').to_string(),
                    addrs,
                }),
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
        if hosts.is_empty() {
            return Err(last_error.unwrap_or(RouteError::Temporary(format!(
                "no address found for any MX of {domain}"
            ))));
        }
        Ok(hosts)
    }

    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, RouteError> {
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(RouteError::Temporary(format!(
                "address lookup for {name}: {e}"
            ))),
        }
    }
}
