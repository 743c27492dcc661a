//! The sending platform behind the API: accounts, sender domains
//! (identities), sender addresses, templates, blocklists, unsubscribe
//! settings, recipient lists and the per-account message index.
//!
//! Every record is a JSON value in the [`Store`], so a cluster's nodes share
//! them; each account's records are listed through a set of their ids. Keys
//! that name an account's resource start with `acct:<name>:`, and a record
//! read by id is checked against the caller's account: nothing one account
//! creates is visible to another.

pub mod accounts;
pub mod addresses;
pub mod identities;
pub mod templates;

use crate::config::Settings;
use crate::store::{Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
}

pub type Result<T> = std::result::Result<T, PlatformError>;

#[derive(Clone)]
pub struct Platform {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub resolver: Arc<crate::delivery::mx::MxResolver>,
    pub policy: Arc<crate::policy::Policy>,
}

impl Platform {
    pub async fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PlatformError::Corrupt {
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
