//! HTTP requests Kiln makes to an address a tenant chose (callbacks): only
//! to the public Internet, unless the operator lists a network.
//!
//! A callback URL of `http://127.0.0.1:6379/`, `http://[::1]/`,
//! `http://localhost/` or the cloud metadata address, or a receiver that
//! redirects there, would make Kiln POST into the host's own services. So
//! a name is resolved once, here, and the connection goes to the
//! addresses that passed; an address literal is checked before the
//! request; redirects are not followed; proxies from the environment are
//! not used (the proxy, not the target, would be checked).

use crate::address::is_internal;
use crate::net::Cidr;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Where requests may go: any public address, and the internal networks
/// the operator lists.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed: Vec<Cidr>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("{0:?} is not an http(s) URL")]
    NotHttp(String),
    #[error(
        "{host} ({ip}) is an internal address: not a destination unless a network of {setting} holds it"
    )]
    Internal {
        host: String,
        ip: IpAddr,
        setting: &'static str,
    },
}

impl Destinations {
    /// The listed networks (checked CIDR strings; a bad one is skipped, as
    /// the settings check reports it).
    pub fn new(allowed: &[String]) -> Destinations {
        Destinations {
            allowed: allowed.iter().filter_map(|n| Cidr::parse(n)).collect(),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allowed.iter().any(|n| n.contains(ip))
    }

    /// The addresses `host` resolved to that a request may go to, for a
    /// resolver reqwest uses (port 0: the URL's port applies); refused
    /// when it resolved only to addresses these do not permit.
    pub fn resolved(
        &self,
        host: String,
        found: impl IntoIterator<Item = IpAddr>,
        setting: &'static str,
    ) -> Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> {
        let (ok, refused): (Vec<IpAddr>, Vec<IpAddr>) =
            found.into_iter().partition(|ip| self.permits(*ip));
        match (ok.is_empty(), refused.first()) {
            (true, Some(&ip)) => Err(Box::new(Refused::Internal { host, ip, setting })),
            _ => Ok(Box::new(ok.into_iter().map(|ip| SocketAddr::new(ip, 0)))),
        }
    }

    /// Checks what can be checked of `url` without DNS: its scheme, and
    /// its host when that is an address.
    pub fn check_url(&self, url: &str, setting: &'static str) -> Result<(), Refused> {
        let parsed = reqwest::Url::parse(url).map_err(|_| Refused::NotHttp(url.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refused::NotHttp(url.into()));
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Refused::NotHttp(url.into())),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refused::Internal {
                host: ip.to_string(),
                ip,
                setting,
            })
        }
    }

    /// An HTTP client whose connections go only where these allow:
    /// `builder`'s settings, names resolved and checked here, no
    /// redirects, no proxy. `setting` names the list in refusals.
    pub fn client(
        &self,
        builder: reqwest::ClientBuilder,
        setting: &'static str,
    ) -> reqwest::Result<reqwest::Client> {
        builder
            .dns_resolver(Arc::new(CheckedResolver {
                allowed: self.clone(),
                setting,
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
    }
}

/// The system's resolver, keeping only the addresses a request may go to.
struct CheckedResolver {
    allowed: Destinations,
    setting: &'static str,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (allowed, setting) = (self.allowed.clone(), self.setting);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect();
            allowed.resolved(host, found, setting)
        })
    }
}

/// An error with what caused it ("error sending request" says nothing of
/// a refused destination or a reset connection on its own).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_listed() {
        let none = Destinations::new(&[]);
        for url in [
            "http://127.0.0.1:6379/",
            "http://[::1]:8080/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
            "http://2130706433/",
            "http://[::ffff:127.0.0.1]/",
            "http://224.0.0.1/",
        ] {
            assert!(
                none.check_url(url, "callbacks.allow_networks").is_err(),
                "{url}"
            );
        }
        assert!(none.check_url("https://hooks.example.com/k", "x").is_ok());
        assert!(none.check_url("http://192.0.43.10/", "x").is_ok());
        assert!(matches!(
            none.check_url("ftp://example.com/", "x"),
            Err(Refused::NotHttp(_))
        ));
        let lan = Destinations::new(&["10.0.0.0/8".into(), "::1/128".into()]);
        assert!(lan.check_url("http://10.0.0.5/", "x").is_ok());
        assert!(lan.check_url("http://[::1]:8080/x", "x").is_ok());
        assert!(lan.check_url("http://127.0.0.1/", "x").is_err());
    }
}
