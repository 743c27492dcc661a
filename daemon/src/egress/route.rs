//! Where a domain's mail goes, remembered for a while: its MX hosts and
//! addresses (`dns::MxResolver`), and so its provider or site. Every entry
//! for a domain asks here before it is placed in a line; a domain nobody
//! has asked about is resolved once, whatever number of entries wait for it.

use crate::dns::{MxHost, MxResolver, RouteError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer is used: MX sets change rarely, and a change is
/// picked up within this.
const ROUTE_TTL: Duration = Duration::from_secs(300);
/// DNS trouble is asked about again sooner.
const TROUBLE_TTL: Duration = Duration::from_secs(30);
/// The most domains remembered; past it the expired ones go.
const MAX_ROUTES: usize = 100_000;

pub type Route = Result<Arc<[MxHost]>, RouteError>;

pub struct Routes {
    resolver: MxResolver,
    known: Mutex<HashMap<String, (Instant, Route)>>,
}

impl Routes {
    pub fn new(resolver: MxResolver) -> Routes {
        Routes {
            resolver,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The remembered route of `domain` (lowercase), if it is fresh.
    pub fn cached(&self, domain: &str) -> Option<Route> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(domain)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, r)| r.clone())
    }

    /// Resolves `domain` and remembers the answer.
    pub async fn resolve(&self, domain: &str) -> Route {
        let route: Route = self.resolver.route(domain).await.map(Arc::from);
        let ttl = match &route {
            Err(RouteError::Temporary(_)) => TROUBLE_TTL,
            _ => ROUTE_TTL,
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_ROUTES {
            let now = Instant::now();
            known.retain(|_, (until, _)| *until > now);
            if known.len() >= MAX_ROUTES {
                known.clear();
            }
        }
        known.insert(domain.to_string(), (Instant::now() + ttl, route.clone()));
        route
    }

    /// Forgets `domain`'s route: no MX of it answered, so ask DNS again.
    pub fn forget(&self, domain: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain);
    }
}
