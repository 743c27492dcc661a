//! The egress plan: what the `egress_plan` hook answered, checked and made
//! ready to use: sources (a local address and the EHLO name it uses),
//! pools of weighted sources, and providers with their limits.
//!
//! A provider is the recipient domains whose MX hosts end in one of its
//! suffixes; every other destination is a site of its own (its MX host
//! set) with the default limits. Limits count per (provider, source).

use crate::policy::decisions::{EgressPlan, Limits};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct Source {
    pub name: Arc<str>,
    /// The local address to connect from (None: the system picks).
    pub address: Option<IpAddr>,
    pub ehlo: String,
    /// Its daily volume per provider follows the warm-up curve.
    pub warmup: bool,
}

#[derive(Debug, Clone)]
struct Provider {
    name: Arc<str>,
    suffixes: Vec<String>,
    limits: Limits,
}

#[derive(Debug, Clone)]
pub struct Plan {
    defaults: Limits,
    providers: Vec<Provider>,
    sources: Vec<Arc<Source>>,
    /// Pool → its members (index into `sources`, weight).
    pools: HashMap<String, Vec<(usize, u32)>>,
    default_pool: Vec<(usize, u32)>,
    /// The policy version this plan was read from.
    pub version: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("egress_plan: {0}")]
    Hook(String),
    #[error("egress_plan: source {0:?}: address {1:?} is not an IP address")]
    BadAddress(String, String),
    #[error("egress_plan: source {0:?} is named twice")]
    Duplicate(String),
    #[error("egress_plan: pool {0:?}: {1:?} is neither a source nor an address")]
    UnknownSource(String, String),
    #[error("egress_plan: pool {0:?}: a member's weight must be at least 1")]
    ZeroWeight(String),
    #[error("egress_plan: pool {0:?} is empty")]
    EmptyPool(String),
    #[error("egress_plan: provider {0:?}: {1}")]
    BadProvider(String, String),
}

/// Where a domain's mail goes, as shaping sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// The provider's name, or the site (its MX hosts, sorted).
    pub provider: Arc<str>,
    /// The MX host set: connections are per site.
    pub site: Arc<str>,
    pub limits: Limits,
}

/// Fills in what `over` leaves out from `base`.
fn merged(over: Limits, base: Limits) -> Limits {
    Limits {
        connections: over.connections.or(base.connections),
        messages_per_connection: over
            .messages_per_connection
            .or(base.messages_per_connection),
        per_second: over.per_second.or(base.per_second),
        per_minute: over.per_minute.or(base.per_minute),
        per_hour: over.per_hour.or(base.per_hour),
        new_connections_per_minute: over
            .new_connections_per_minute
            .or(base.new_connections_per_minute),
    }
}

impl Plan {
    /// The plan from the hook's answer (None: the hook is not defined).
    /// `fallback` are the limits from the config's `[delivery]` section,
    /// used where the plan gives none; the default pool is the plan's
    /// `default` pool, or one source on `source_address` named "default".
    pub fn compile(
        answer: Option<EgressPlan>,
        fallback: Limits,
        source_address: Option<IpAddr>,
        hostname: &str,
        version: u64,
    ) -> Result<Plan, PlanError> {
        let answer = answer.unwrap_or_default();
        let defaults = merged(answer.defaults, fallback);
        let mut sources: Vec<Arc<Source>> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for s in &answer.sources {
            let address = match &s.address {
                Some(a) => Some(
                    a.parse::<IpAddr>()
                        .map_err(|_| PlanError::BadAddress(s.name.clone(), a.clone()))?,
                ),
                None => None,
            };
            if by_name.insert(s.name.clone(), sources.len()).is_some() {
                return Err(PlanError::Duplicate(s.name.clone()));
            }
            sources.push(Arc::new(Source {
                name: s.name.as_str().into(),
                address,
                ehlo: s.ehlo.clone().unwrap_or_else(|| hostname.to_string()),
                warmup: s.warmup,
            }));
        }
        let mut pools = HashMap::new();
        for (name, members) in &answer.pools {
            if members.is_empty() {
                return Err(PlanError::EmptyPool(name.clone()));
            }
            let mut list = Vec::new();
            for m in members {
                if m.weight == 0 {
                    return Err(PlanError::ZeroWeight(name.clone()));
                }
                let idx = match by_name.get(&m.source) {
                    Some(i) => *i,
                    // An address is a source of its own, named after it.
                    None => {
                        let ip: IpAddr = m.source.parse().map_err(|_| {
                            PlanError::UnknownSource(name.clone(), m.source.clone())
                        })?;
                        by_name.insert(m.source.clone(), sources.len());
                        sources.push(Arc::new(Source {
                            name: m.source.as_str().into(),
                            address: Some(ip),
                            ehlo: hostname.to_string(),
                            warmup: false,
                        }));
                        sources.len() - 1
                    }
                };
                list.push((idx, m.weight));
            }
            pools.insert(name.clone(), list);
        }
        let default_pool = match pools.get("default") {
            Some(p) => p.clone(),
            None => {
                sources.push(Arc::new(Source {
                    name: "default".into(),
                    address: source_address,
                    ehlo: hostname.to_string(),
                    warmup: false,
                }));
                vec![(sources.len() - 1, 1)]
            }
        };
        let mut providers = Vec::new();
        for p in answer.providers {
            if p.mx.is_empty() {
                return Err(PlanError::BadProvider(p.name, "no mx suffix".into()));
            }
            providers.push(Provider {
                name: p.name.as_str().into(),
                suffixes: p
                    .mx
                    .iter()
                    .map(|s| s.trim_matches('.').to_ascii_lowercase())
                    .collect(),
                limits: merged(p.limits, defaults),
            });
        }
        Ok(Plan {
            defaults,
            providers,
            sources,
            pools,
            default_pool,
            version,
        })
    }

    /// `old`, kept for policy version `version` (whose plan was refused).
    pub fn keep(old: &Plan, version: u64) -> Plan {
        Plan {
            version,
            ..old.clone()
        }
    }

    /// The provider (or site) of a destination whose MX hosts are
    /// `hosts`, most preferred first.
    pub fn destination(&self, hosts: &[&str]) -> Destination {
        let mut sorted: Vec<String> = hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let site: Arc<str> = {
            let mut s = sorted.clone();
            s.sort();
            s.dedup();
            s.join(",").into()
        };
        for host in sorted.drain(..) {
            for p in &self.providers {
                let hit = p.suffixes.iter().any(|suffix| {
                    host == *suffix
                        || host
                            .strip_suffix(suffix.as_str())
                            .is_some_and(|rest| rest.ends_with('.'))
                });
                if hit {
                    return Destination {
                        provider: p.name.clone(),
                        site,
                        limits: p.limits,
                    };
                }
            }
        }
        Destination {
            provider: site.clone(),
            site,
            limits: self.defaults,
        }
    }

    /// The sources of a pool (the default pool for "" or a pool the plan
    /// does not have), with their weights.
    pub fn pool(&self, name: &str) -> impl Iterator<Item = (&Arc<Source>, u32)> {
        let members = self.pools.get(name).unwrap_or(&self.default_pool);
        members
            .iter()
            .filter_map(|(i, w)| Some((self.sources.get(*i)?, *w)))
    }

    /// The plan's source with this address, if any.
    pub fn source_with_address(&self, ip: IpAddr) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| s.address == Some(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decisions::{PoolMember, ProviderPlan, SourcePlan};

    fn limits(connections: u32) -> Limits {
        Limits {
            connections: Some(connections),
            ..Limits::default()
        }
    }

    fn plan() -> Plan {
        let answer = EgressPlan {
            defaults: limits(4),
            providers: vec![ProviderPlan {
                name: "gmail".into(),
                mx: vec!["google.com".into()],
                limits: Limits {
                    per_minute: Some(600.0),
                    ..Limits::default()
                },
            }],
            sources: vec![SourcePlan {
                name: "a".into(),
                address: Some("192.0.2.1".into()),
                ehlo: Some("mta-a.test".into()),
                warmup: true,
            }],
            pools: [(
                "bulk".to_string(),
                vec![
                    PoolMember {
                        source: "a".into(),
                        weight: 1,
                    },
                    PoolMember {
                        source: "192.0.2.2".into(),
                        weight: 3,
                    },
                ],
            )]
            .into(),
        };
        Plan::compile(Some(answer), limits(10), None, "kiln.test", 1).expect("plan")
    }

    #[test]
    fn domains_on_a_providers_mx_share_it_and_others_are_sites() {
        let p = plan();
        let g = p.destination(&["aspmx.l.google.com", "alt1.aspmx.l.google.com"]);
        assert_eq!(&*g.provider, "gmail");
        // Limits a provider leaves out are the defaults'.
        assert_eq!(g.limits.connections, Some(4));
        assert_eq!(g.limits.per_minute, Some(600.0));
        // "notgoogle.com" is not under google.com.
        let other = p.destination(&["mx.notgoogle.com"]);
        assert_eq!(&*other.provider, "mx.notgoogle.com");
        let site = p.destination(&["mx2.site.test", "MX1.site.test."]);
        assert_eq!(&*site.provider, "mx1.site.test,mx2.site.test");
        assert_eq!(site, p.destination(&["mx1.site.test", "mx2.site.test"]));
        assert_eq!(site.limits.connections, Some(4));
    }

    #[test]
    fn pools_name_sources_or_addresses() {
        let p = plan();
        let bulk: Vec<_> = p
            .pool("bulk")
            .map(|(s, w)| (s.name.to_string(), s.ehlo.clone(), w))
            .collect();
        assert_eq!(
            bulk,
            [
                ("a".into(), "mta-a.test".into(), 1),
                ("192.0.2.2".into(), "kiln.test".into(), 3)
            ]
        );
        let default: Vec<_> = p.pool("").map(|(s, _)| s.name.to_string()).collect();
        assert_eq!(default, ["default"]);
        assert_eq!(p.pool("nonesuch").count(), 1);
        assert!(
            p.source_with_address("192.0.2.2".parse().unwrap())
                .is_some()
        );

        let bad = EgressPlan {
            pools: [(
                "x".to_string(),
                vec![PoolMember {
                    source: "nope".into(),
                    weight: 1,
                }],
            )]
            .into(),
            ..EgressPlan::default()
        };
        let e = Plan::compile(Some(bad), limits(1), None, "h", 1).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }
}
