//! Daily sending statistics per sender domain and receiving mailbox
//! provider (the recipient's domain, e.g. gmail.com): requests, accepted,
//! delivered, bounced, opened, clicked, unsubscribed. Counted in memory and
//! added to store counters once a second (one round trip on Redis), so the
//! sending path pays a map update, not a store write. A crash forgets at most
//! one second of counts.

use crate::store::{BatchOp, Store};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Statistics are kept this long.
const RETENTION: Duration = Duration::from_secs(400 * 86400);

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Request,
    Accepted,
    Delivered,
    Bounce,
    Open,
    Click,
    Unsubscribe,
}

impl Metric {
    /// The name in the store's counter keys.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Request => "request",
            Metric::Accepted => "accepted",
            Metric::Delivered => "delivered",
            Metric::Bounce => "bounce",
            Metric::Open => "open",
            Metric::Click => "click",
            Metric::Unsubscribe => "unsubscribe",
        }
    }
}

/// Every metric, in the order of [`DailyStats::day_counts`]' answer.
pub const METRICS: [Metric; 7] = [
    Metric::Request,
    Metric::Accepted,
    Metric::Delivered,
    Metric::Bounce,
    Metric::Open,
    Metric::Click,
    Metric::Unsubscribe,
];

/// (sender domain, provider, metric) → count.
type Pending = HashMap<(String, String, Metric), i64>;

pub struct DailyStats {
    store: Store,
    time_zone: jiff::tz::TimeZone,
    pending: Mutex<Pending>,
    /// Providers already filed under (domain, day) by this node.
    known: Mutex<HashSet<(String, String, String)>>,
}

pub fn counter_key(domain: &str, day: &str, provider: &str, metric: &str) -> String {
    format!("stats:{domain}:{day}:{provider}:{metric}")
}

pub fn providers_key(domain: &str, day: &str) -> String {
    format!("stats-providers:{domain}:{day}")
}

impl DailyStats {
    pub fn new(store: Store, time_zone: jiff::tz::TimeZone) -> Arc<DailyStats> {
        Arc::new(DailyStats {
            store,
            time_zone,
            pending: Mutex::new(HashMap::new()),
            known: Mutex::new(HashSet::new()),
        })
    }

    pub fn record(&self, sender_domain: &str, recipient: &str, metric: Metric, n: i64) {
        if n == 0 || sender_domain.is_empty() {
            return;
        }
        let provider = crate::net::domain_of(recipient).to_ascii_lowercase();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *p.entry((sender_domain.to_ascii_lowercase(), provider, metric))
            .or_default() += n;
    }

    /// Adds what was counted to the store's counters.
    pub async fn flush(&self) {
        let batch: Pending = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *p)
        };
        if batch.is_empty() {
            return;
        }
        let day =
            crate::policy::time::day(&self.time_zone, self.store.now_ms()).unwrap_or_default();
        let mut ops = Vec::with_capacity(batch.len());
        let mut new_providers = Vec::new();
        for ((domain, provider, metric), n) in &batch {
            ops.push(BatchOp::Incr(
                counter_key(domain, &day, provider, metric.name()),
                *n,
                RETENTION,
            ));
            let dim = (domain.clone(), day.clone(), provider.clone());
            let fresh = self.known.lock().map(|mut k| k.insert(dim)).unwrap_or(true);
            if fresh {
                new_providers.push((domain.clone(), provider.clone()));
            }
        }
        if let Err(e) = self.store.batch(&ops).await {
            tracing::warn!(error = %e, "statistics not saved; counts of the last second are lost");
            return;
        }
        for (domain, provider) in new_providers {
            if let Err(e) = self
                .store
                .set_add(&providers_key(&domain, &day), &provider, Some(RETENTION))
                .await
            {
                tracing::warn!(error = %e, "statistics: provider not filed");
            }
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() > 100_000 {
            known.clear();
        }
    }

    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        crate::net::flush_every(FLUSH_INTERVAL, stop, || self.flush()).await;
    }

    /// One day's counts for a sender domain, optionally one provider:
    /// metric → count, in [`METRICS`] order.
    pub async fn day_counts(
        &self,
        domain: &str,
        day: &str,
        provider: Option<&str>,
    ) -> crate::store::Result<[i64; 7]> {
        let providers = match provider {
            Some(p) => vec![p.to_ascii_lowercase()],
            None => self.store.set_members(&providers_key(domain, day)).await?,
        };
        let mut ops = Vec::new();
        for p in &providers {
            for m in METRICS {
                ops.push(BatchOp::Get(counter_key(domain, day, p, m.name())));
            }
        }
        let mut out = [0i64; 7];
        for (i, v) in self.store.batch(&ops).await?.into_iter().enumerate() {
            if let crate::store::BatchValue::Bytes(Some(b)) = v {
                out[i % 7] += String::from_utf8_lossy(&b)
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0);
            }
        }
        Ok(out)
    }
}
