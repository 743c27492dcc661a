//! Blocklists. The hard-bounce blocklist is the installation's (set
//! `blocklist`, filled by the `classify_bounce` hook); each entry is also
//! filed under the sender domain whose mail bounced, so an account sees and
//! removes only the entries its own domains caused. Custom blocklists are an
//! account's own, with an optional expiry date, and the `check_limits` hook
//! drops their addresses (set `custom-blocklist:<account>`).

use super::{Records, RecordsError, account_key};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A hard-bounce blocklist entry as an account sees it.
pub struct BlockedAddress {
    pub address: String,
    pub at_ms: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomEntry {
    pub id: u64,
    pub email: String,
    pub created_at_ms: i64,
    /// `YYYY-MM-DD`, the last day it applies; None: no end.
    pub expire_date: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BounceNote {
    at_ms: i64,
    #[serde(default)]
    reason: String,
}

/// What CreateCustomBlacklist did with each address.
#[derive(Debug, Default)]
pub struct AddReport {
    pub total: usize,
    pub valid: usize,
    pub too_long: usize,
    pub repeated: usize,
    pub invalid: usize,
}

/// Names the policy scripts use too (they see them without the prefix).
fn script_key(key: &str) -> String {
    crate::policy::lua_host::ns(key)
}

pub fn custom_set(account: &str) -> String {
    script_key(&format!("custom-blocklist:{account}"))
}

/// The installation-wide hard-bounce blocklist (`blocklist` to scripts).
fn blocklist() -> String {
    script_key("blocklist")
}

fn domain_set(domain: &str) -> String {
    script_key(&format!("blocklist:{domain}"))
}

fn note_key(address: &str) -> String {
    script_key(&format!("blocklist-at:{address}"))
}

fn custom_index(account: &str) -> String {
    account_key(account, "custom-blocklist")
}

fn custom_key(account: &str, id: &str) -> String {
    account_key(account, &format!("custom-blocklist:{id}"))
}

impl Records {
    /// Whether `address` is on the hard-bounce blocklist, since when and why.
    pub async fn blocklist_entry(
        &self,
        address: &str,
    ) -> Result<Option<BlockedAddress>, RecordsError> {
        let address = address.trim().to_ascii_lowercase();
        if !self.store.set_contains(&blocklist(), &address).await? {
            return Ok(None);
        }
        let note: Option<BounceNote> = self.load(&note_key(&address)).await?;
        Ok(Some(BlockedAddress {
            at_ms: note.as_ref().map(|n| n.at_ms).unwrap_or(0),
            reason: note.map(|n| n.reason).unwrap_or_default(),
            address,
        }))
    }

    /// Forgets which blocklist entries `domain` caused (the entries stay:
    /// the addresses bounced, whoever sent): its next owner cannot see or
    /// lift them.
    pub async fn forget_blocklist_entries(&self, domain: &str) -> Result<(), RecordsError> {
        self.clear_set(&domain_set(domain)).await
    }

    /// Hard-bounce entries caused by the account's sender domains.
    pub async fn blocked_for_account(
        &self,
        account: &str,
    ) -> Result<Vec<BlockedAddress>, RecordsError> {
        let mut out = Vec::new();
        for identity in self.owned_identities(account).await? {
            for address in self
                .store
                .set_members(&domain_set(&identity.domain))
                .await?
            {
                if out.iter().any(|b: &BlockedAddress| b.address == address) {
                    continue;
                }
                if let Some(entry) = self.blocklist_entry(&address).await? {
                    out.push(entry);
                }
            }
        }
        out.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(a.address.cmp(&b.address)));
        Ok(out)
    }

    /// Takes addresses off the hard-bounce blocklist, those the account's
    /// domains caused; returns how many.
    pub async fn unblock(
        &self,
        account: &str,
        addresses: &[String],
    ) -> Result<usize, RecordsError> {
        let mut removed = 0;
        let identities = self.owned_identities(account).await?;
        for address in addresses {
            let address = address.trim().to_ascii_lowercase();
            let mut ours = false;
            for i in &identities {
                ours |= self
                    .store
                    .set_remove(&domain_set(&i.domain), &address)
                    .await?;
            }
            if ours && self.store.set_remove(&blocklist(), &address).await? {
                self.store.delete(&note_key(&address)).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// How long a custom entry still applies (None: no end; zero: expired).
    fn custom_ttl(&self, expire_date: Option<&str>) -> Option<Duration> {
        let date: jiff::civil::Date = expire_date?.parse().ok()?;
        let end = date
            .tomorrow()
            .ok()?
            .to_zoned(self.time_zone.clone())
            .ok()?
            .timestamp()
            .as_millisecond();
        Some(Duration::from_millis(
            (end - self.store.now_ms()).max(0) as u64
        ))
    }

    async fn apply_custom(&self, account: &str, e: &CustomEntry) -> Result<(), RecordsError> {
        match self.custom_ttl(e.expire_date.as_deref()) {
            Some(ttl) if ttl.is_zero() => {
                self.store
                    .set_remove(&custom_set(account), &e.email)
                    .await?;
            }
            ttl => {
                self.store
                    .set_add(&custom_set(account), &e.email, ttl)
                    .await?
            }
        }
        Ok(())
    }

    pub async fn add_custom_blocklist(
        &self,
        account: &str,
        emails: &[String],
        expire_date: Option<String>,
    ) -> Result<AddReport, RecordsError> {
        let mut report = AddReport {
            total: emails.len(),
            ..AddReport::default()
        };
        let existing: Vec<String> = self
            .list_custom_blocklist(account)
            .await?
            .into_iter()
            .map(|e| e.email)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for email in emails {
            if email.len() > 254 {
                report.too_long += 1;
                continue;
            }
            let Some(email) = super::addresses::normalize_address(email) else {
                report.invalid += 1;
                continue;
            };
            let email = email.to_ascii_lowercase();
            if existing.contains(&email) || !seen.insert(email.clone()) {
                report.repeated += 1;
                continue;
            }
            let entry = loop {
                let id = rand::random_range(1..i32::MAX as u64);
                let entry = CustomEntry {
                    id,
                    email: email.clone(),
                    created_at_ms: self.store.now_ms(),
                    expire_date: expire_date.clone(),
                };
                if self
                    .create(&custom_key(account, &id.to_string()), &entry)
                    .await?
                {
                    break entry;
                }
            };
            self.store
                .set_add(&custom_index(account), &entry.id.to_string(), None)
                .await?;
            self.apply_custom(account, &entry).await?;
            report.valid += 1;
        }
        Ok(report)
    }

    pub async fn list_custom_blocklist(
        &self,
        account: &str,
    ) -> Result<Vec<CustomEntry>, RecordsError> {
        let mut all: Vec<CustomEntry> = self
            .load_all(&custom_index(account), |id| custom_key(account, id))
            .await?;
        all.sort_by_key(|e| (std::cmp::Reverse(e.created_at_ms), e.id));
        Ok(all)
    }

    /// Whether the entry still applies today.
    pub fn custom_active(&self, e: &CustomEntry) -> bool {
        self.custom_ttl(e.expire_date.as_deref())
            .is_none_or(|t| !t.is_zero())
    }

    /// Changes an entry's address and expiry; false when it does not exist.
    pub async fn update_custom_blocklist(
        &self,
        account: &str,
        id: u64,
        email: &str,
        expire_date: Option<String>,
    ) -> Result<bool, RecordsError> {
        let key = custom_key(account, &id.to_string());
        let Some(mut entry) = self.load::<CustomEntry>(&key).await? else {
            return Ok(false);
        };
        self.store
            .set_remove(&custom_set(account), &entry.email)
            .await?;
        entry.email = email.to_ascii_lowercase();
        entry.expire_date = expire_date;
        self.save(&key, &entry).await?;
        self.apply_custom(account, &entry).await?;
        Ok(true)
    }

    /// Removes the entries for these addresses; returns how many.
    pub async fn delete_custom_blocklist(
        &self,
        account: &str,
        emails: &[String],
    ) -> Result<usize, RecordsError> {
        let wanted: Vec<String> = emails
            .iter()
            .map(|e| e.trim().to_ascii_lowercase())
            .collect();
        let mut removed = 0;
        for e in self.list_custom_blocklist(account).await? {
            if wanted.contains(&e.email) {
                self.store
                    .delete(&custom_key(account, &e.id.to_string()))
                    .await?;
                self.store
                    .set_remove(&custom_index(account), &e.id.to_string())
                    .await?;
                self.store
                    .set_remove(&custom_set(account), &e.email)
                    .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
