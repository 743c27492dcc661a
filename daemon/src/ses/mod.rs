//! The SES records, the product's own data behind the API: accounts, sender domains
//! (identities), sender addresses, templates, blocklists, unsubscribe
//! settings, recipient lists and the per-account message index.
//!
//! Every record is a JSON value in the [`Store`], so a cluster's nodes share
//! them; each account's records are listed through a set of their ids. Keys
//! that name an account's resource start with `acct:<name>:`, and a record
//! read by id is checked against the caller's account: nothing one account
//! creates is visible to another.

pub mod abuse;
pub mod accounts;
pub mod addresses;
pub mod blocklists;
pub mod config_accounts;
pub mod dkim;
pub mod identities;
pub mod operators;
pub mod receivers;
pub mod stats;
pub mod tasks;
pub mod templates;
pub mod unsubscribe;

use crate::config::Settings;
use crate::store::{Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Dkim(#[from] crate::ses::dkim::DkimError),
}

pub type Result<T> = std::result::Result<T, RecordsError>;

#[derive(Clone)]
pub struct Records {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub resolver: Arc<crate::dns::MxResolver>,
    pub policy: Arc<crate::policy::Policy>,
    /// Days (quotas, statistics, the message index) are counted in it.
    pub time_zone: jiff::tz::TimeZone,
    /// Recipient-list uploads append to shared chunks: one at a time.
    pub uploads: Arc<tokio::sync::Mutex<()>>,
}

impl Records {
    pub async fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RecordsError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    pub async fn save<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.store
            .put(key, &crate::store::encode(value), None)
            .await?;
        Ok(())
    }

    /// Stores `value` unless `key` exists; true when stored.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<bool> {
        Ok(self
            .store
            .put_if_absent(key, &crate::store::encode(value))
            .await?)
    }

    /// Every record listed in `index` (ids whose record vanished are skipped).
    pub async fn load_all<T: DeserializeOwned>(
        &self,
        index: &str,
        key_of: impl Fn(&str) -> String,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for id in self.store.set_members(index).await? {
            if let Some(v) = self.load(&key_of(&id)).await? {
                out.push(v);
            }
        }
        Ok(out)
    }
}

impl Records {
    /// `YYYY-MM-DD` of `ms` in the configured time zone.
    pub fn day(&self, ms: i64) -> String {
        crate::policy::time::day(&self.time_zone, ms).unwrap_or_default()
    }

    /// `YYYY-MM-DD HH:MM:SS` of `ms` in the configured time zone, as the API
    /// shows times ("" for 0, i.e. never).
    pub fn time_text(&self, ms: i64) -> String {
        if ms == 0 {
            return String::new();
        }
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| {
                t.to_zoned(self.time_zone.clone())
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string()
            })
            .unwrap_or_default()
    }

    /// Records an API message under its day, for GetSendEmailStatus.
    pub async fn index_message(&self, account: &str, id: &str, now_ms: i64) -> Result<()> {
        let ttl = self.settings.queue.status_retention + std::time::Duration::from_secs(86400);
        self.store
            .set_add(
                &account_key(account, &format!("messages:{}", self.day(now_ms))),
                id,
                Some(ttl),
            )
            .await?;
        Ok(())
    }

    /// The account's API messages of a day, oldest first.
    pub async fn messages_of_day(&self, account: &str, day: &str) -> Result<Vec<String>> {
        let mut ids = self
            .store
            .set_members(&account_key(account, &format!("messages:{day}")))
            .await?;
        // Ids are UUIDv7: their order is the order of arrival.
        ids.sort();
        Ok(ids)
    }
}

/// A random string of `n` letters and digits.
pub fn random_token(n: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// The key of an account's resource.
pub fn account_key(account: &str, what: &str) -> String {
    format!("acct:{account}:{what}")
}
