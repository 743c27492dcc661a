//! The operator's hands on the queue: selections of entries (by domain,
//! provider, account, batch task or source) suspended until resumed, or
//! bounced with a reason. Rules are kept in the store (on Redis for every
//! node, and across restarts on both stores); each node reads them again
//! every second. They act where an entry is about to be attempted: egress
//! asks [`Controls::control`] when it takes an entry, when it knows the
//! entry's provider and source, and again right before the attempt.

use crate::queued::QueueEntry;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The set of rules in the store.
const RULES: &str = "queue:controls";
/// How often a node reads the rules again.
const REFRESH: Duration = Duration::from_secs(1);
/// A suspended entry is parked this long; resuming makes it due at once.
pub const SUSPENDED_PARK_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// The recipient's domain.
    Domain,
    /// The envelope sender's domain (one customer's mail).
    #[serde(rename = "sender_domain")]
    SenderDomain,
    Provider,
    Account,
    Task,
    Source,
}

/// Entries whose `field` is `value` (a domain, compared without case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub field: Field,
    pub value: String,
}

impl Selector {
    /// `domain:shop.test`, `sender_domain:news.acme.test`,
    /// `provider:gmail`, `account:shop`, `task:42`, `source:ip-a`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let (field, value) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected FIELD:VALUE, e.g. domain:example.com"))?;
        let field = match field.trim().to_ascii_lowercase().as_str() {
            "domain" => Field::Domain,
            "sender_domain" => Field::SenderDomain,
            "provider" => Field::Provider,
            "account" => Field::Account,
            "task" => Field::Task,
            "source" => Field::Source,
            other => {
                return Err(format!(
                    "{other:?} is not a field to select by (domain, sender_domain, provider, account, task, source)"
                ));
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{text:?}: the value is empty"));
        }
        let value = if matches!(field, Field::Domain | Field::SenderDomain) {
            value.to_ascii_lowercase()
        } else {
            value.to_string()
        };
        Ok(Selector { field, value })
    }

    /// Whether `entry` is selected; `provider` and `source` as egress
    /// placed it (None: not known yet, and a rule on it does not match).
    pub fn matches(
        &self,
        entry: &QueueEntry,
        provider: Option<&str>,
        source: Option<&str>,
    ) -> bool {
        match self.field {
            Field::Domain => entry.domain().eq_ignore_ascii_case(&self.value),
            Field::SenderDomain => entry
                .sender
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.value)),
            Field::Account => entry.account == self.value,
            Field::Task => entry.task_id == self.value,
            Field::Provider => provider == Some(self.value.as_str()),
            Field::Source => source == Some(self.value.as_str()),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = match self.field {
            Field::Domain => "domain",
            Field::SenderDomain => "sender_domain",
            Field::Provider => "provider",
            Field::Account => "account",
            Field::Task => "task",
            Field::Source => "source",
        };
        write!(f, "{field}:{}", self.value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// No attempt until resumed.
    Suspend,
    /// Each entry queued before the rule was made is bounced with `reason`.
    Bounce { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub select: Selector,
    #[serde(flatten)]
    pub action: Action,
    /// Who asked.
    pub by: String,
    pub at_ms: i64,
}

/// What applies to an entry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Go,
    Suspended(Rule),
    Bounce(Rule),
}

pub struct Controls {
    store: Store,
    /// How long an entry may stay queued: a bounce rule older than that
    /// has nothing left to bounce.
    max_age_ms: i64,
    rules: RwLock<Arc<Vec<Rule>>>,
}

impl Controls {
    pub fn new(store: Store, max_age: Duration) -> Controls {
        Controls {
            store,
            max_age_ms: max_age.as_millis() as i64,
            rules: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// The rules as last read.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// What applies to `entry`: a bounce rule before a suspension.
    pub fn control(
        &self,
        entry: &QueueEntry,
        provider: Option<&str>,
        source: Option<&str>,
    ) -> Control {
        let rules = self.rules();
        if rules.is_empty() {
            return Control::Go;
        }
        let mut suspended = None;
        for r in rules
            .iter()
            .filter(|r| r.select.matches(entry, provider, source))
        {
            match &r.action {
                Action::Bounce { .. } if entry.received_at_ms <= r.at_ms => {
                    return Control::Bounce(r.clone());
                }
                Action::Bounce { .. } => {}
                Action::Suspend => suspended = suspended.or(Some(r.clone())),
            }
        }
        suspended.map_or(Control::Go, Control::Suspended)
    }

    /// The suspension of a source, if it is suspended.
    pub fn source_suspension(&self, source: &str) -> Option<Rule> {
        self.rules()
            .iter()
            .find(|r| {
                r.action == Action::Suspend
                    && r.select.field == Field::Source
                    && r.select.value == source
            })
            .cloned()
    }

    /// Whether `at` is the park time of a suspension (kept as it is).
    pub fn is_park_time(&self, at: i64) -> bool {
        self.rules().iter().any(|r| {
            r.action == Action::Suspend && at > r.at_ms && (at - r.at_ms) % SUSPENDED_PARK_MS == 0
        })
    }

    /// Reads the rules from the store (dropping bounce rules that have
    /// nothing left to bounce).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let now = self.store.now_ms();
        let mut rules = Vec::new();
        for member in self.store.set_members(RULES).await? {
            match serde_json::from_str::<Rule>(&member) {
                Ok(r)
                    if matches!(r.action, Action::Bounce { .. })
                        && now - r.at_ms > self.max_age_ms =>
                {
                    self.store.set_remove(RULES, &member).await?;
                }
                Ok(r) => rules.push(r),
                Err(e) => {
                    tracing::error!(error = %e, rule = %member, "unreadable queue control ignored")
                }
            }
        }
        rules.sort_by_key(|r| r.at_ms);
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        Ok(())
    }

    /// Reads the rules every second until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "queue controls could not be read");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    /// Adds a rule for every node (this one at once).
    pub async fn add(&self, rule: &Rule) -> Result<(), StoreError> {
        let member = serde_json::to_string(rule).unwrap_or_default();
        self.store.set_add(RULES, &member, None).await?;
        self.refresh().await
    }

    /// Removes the suspensions of `select`; answers those removed.
    pub async fn resume(&self, select: &Selector) -> Result<Vec<Rule>, StoreError> {
        let mut removed = Vec::new();
        for member in self.store.set_members(RULES).await? {
            if let Ok(r) = serde_json::from_str::<Rule>(&member)
                && r.action == Action::Suspend
                && r.select == *select
            {
                self.store.set_remove(RULES, &member).await?;
                removed.push(r);
            }
        }
        self.refresh().await?;
        Ok(removed)
    }
}

/// When an entry a suspension holds is due again: the rule's time plus
/// whole park periods, the next one after `now` (so that resuming finds
/// what it parked by its due time alone).
pub fn park_until(rule: &Rule, now_ms: i64) -> i64 {
    let periods = (now_ms - rule.at_ms).max(0) / SUSPENDED_PARK_MS + 1;
    rule.at_ms + periods * SUSPENDED_PARK_MS
}

/// Whether `entry` waits because `rule` parked it.
pub fn parked_by(rule: &Rule, entry: &QueueEntry) -> bool {
    entry.ready_at_ms > rule.at_ms && (entry.ready_at_ms - rule.at_ms) % SUSPENDED_PARK_MS == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, received_at_ms: i64) -> QueueEntry {
        QueueEntry {
            msg_id: "m".into(),
            rcpt_idx: 0,
            recipient: format!("r@{domain}"),
            sender: "s@shop.test".into(),
            attempts: 0,
            received_at_ms,
            ready_at_ms: 0,
            require_tls: false,
            source_ip: None,
            pool: String::new(),
            account: "shop".into(),
            template_id: String::new(),
            task_id: "7".into(),
        }
    }

    #[test]
    fn selectors_parse_and_match() {
        let s = Selector::parse("Domain:Dest.TEST").unwrap();
        assert_eq!(s.to_string(), "domain:dest.test");
        assert!(s.matches(&entry("dest.test", 0), None, None));
        assert!(!s.matches(&entry("other.test", 0), None, None));
        let p = Selector::parse("provider:gmail").unwrap();
        assert!(
            !p.matches(&entry("dest.test", 0), None, None),
            "unknown yet"
        );
        assert!(p.matches(&entry("dest.test", 0), Some("gmail"), None));
        assert!(
            Selector::parse("task:7")
                .unwrap()
                .matches(&entry("x.test", 0), None, None)
        );
        assert!(
            Selector::parse("account:shop")
                .unwrap()
                .matches(&entry("x.test", 0), None, None)
        );
        assert!(
            Selector::parse("source:a")
                .unwrap()
                .matches(&entry("x.test", 0), None, Some("a"))
        );
        let one_customer = Selector::parse("sender_domain:Shop.Test").unwrap();
        assert_eq!(one_customer.to_string(), "sender_domain:shop.test");
        assert!(one_customer.matches(&entry("x.test", 0), None, None));
        let other = Selector::parse("sender_domain:other.test").unwrap();
        assert!(!other.matches(&entry("x.test", 0), None, None));
        let json = serde_json::to_string(&one_customer).unwrap();
        assert!(json.contains("\"sender_domain\""), "{json}");
        for bad in ["dest.test", "colour:red", "domain:"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_bounce_takes_only_what_was_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(
            crate::store::embedded::EmbeddedStore::open(
                &dir.path().join("db"),
                Duration::from_secs(60),
                crate::clock::Clock::system(),
            )
            .unwrap(),
        );
        let c = Controls::new(store, Duration::from_secs(3600));
        let bounce = Rule {
            select: Selector::parse("domain:dest.test").unwrap(),
            action: Action::Bounce {
                reason: "closed".into(),
            },
            by: "alice".into(),
            at_ms: 1_000,
        };
        let suspend = Rule {
            select: Selector::parse("account:shop").unwrap(),
            action: Action::Suspend,
            by: "bob".into(),
            at_ms: 2_000,
        };
        *c.rules.write().unwrap() = Arc::new(vec![bounce.clone(), suspend.clone()]);
        assert_eq!(
            c.control(&entry("dest.test", 500), None, None),
            Control::Bounce(bounce)
        );
        assert_eq!(
            c.control(&entry("dest.test", 1_500), None, None),
            Control::Suspended(suspend)
        );
        let mut other = entry("x.test", 0);
        other.account = "else".into();
        assert_eq!(c.control(&other, None, None), Control::Go);
    }
}
