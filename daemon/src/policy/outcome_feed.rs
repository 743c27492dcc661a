//! Sends and delivery outcomes for the `reputation` hook, summed per sender domain and
//! kind and handed over a few times a second: one hook call for many
//! outcomes instead of one per message. The rules work on the day's
//! counters, so only the timing of a raise or a block moves (by at most one
//! interval); a crash forgets at most one interval of outcomes.

use crate::policy::Policy;
use crate::policy::decisions::ReputationEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

pub struct OutcomeFeed {
    policy: Arc<Policy>,
    /// Kind → sender domain → count (a message's domain is usually there
    /// already, and is then not copied).
    pending: Mutex<HashMap<&'static str, HashMap<String, i64>>>,
}

impl OutcomeFeed {
    pub fn new(policy: Arc<Policy>) -> Arc<OutcomeFeed> {
        Arc::new(OutcomeFeed {
            policy,
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn record(&self, domain: &str, kind: &'static str) {
        self.record_n(domain, kind, 1);
    }

    pub fn record_n(&self, domain: &str, kind: &'static str, n: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let domains = pending.entry(kind).or_default();
        match domains.get_mut(domain) {
            Some(count) => *count += n,
            None => {
                domains.insert(domain.to_string(), n);
            }
        }
    }

    /// Hands everything recorded so far to the hook.
    pub async fn flush(&self) {
        let batch: Vec<(String, &'static str, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .iter_mut()
                .flat_map(|(kind, domains)| domains.drain().map(|(d, n)| (d, *kind, n)))
                .collect()
        };
        for (domain, kind, count) in batch {
            let event = ReputationEvent {
                domain,
                account: String::new(),
                kind: kind.into(),
                count,
                now: self.policy.now_ms(),
            };
            // Errors are logged and counted by the policy; outcomes stand.
            let _ = self
                .policy
                .call(crate::policy::hooks::Reputation, &event)
                .await;
        }
    }

    /// Flushes every interval until `stop`, then once more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        crate::net::flush_every(FLUSH_INTERVAL, stop, || self.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::Fixture;
    use serde_json::{Value, json};

    #[tokio::test]
    async fn delivery_outcomes_reach_the_reputation_hook_summed() {
        let f = Fixture::new();
        let policy = std::sync::Arc::new(
            Policy::load(f.settings("return {}"), f.store.clone()).expect("load"),
        );
        let now = policy.now_ms();
        let sent =
            json!({"domain": "shop.test", "account": "", "kind": "sent", "count": 350, "now": now});
        let _: Option<Value> = policy
            .call(crate::policy::hooks::Reputation, &sent)
            .await
            .expect("sent");
        let feed = OutcomeFeed::new(policy.clone());
        for _ in 0..350 {
            feed.record("shop.test", "delivered");
        }
        feed.flush().await;
        let query =
            json!({"domain": "shop.test", "account": "", "kind": "query", "count": 0, "now": now});
        let st: Value = policy
            .call(crate::policy::hooks::Reputation, &query)
            .await
            .expect("query")
            .expect("state");
        assert_eq!(
            st["level"], 2,
            "350 clean deliveries at 70% of level 1: {st}"
        );
        assert_eq!(
            f.store
                .get(&format!(
                    "lua:rep:shop.test:{}:delivered",
                    crate::policy::time::day(&jiff::tz::TimeZone::UTC, now).expect("day")
                ))
                .await
                .expect("get"),
            Some(b"350".to_vec()),
            "one event carried all 350"
        );
    }
}
