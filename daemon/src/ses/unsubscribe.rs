//! Per-address unsubscribe settings: whether sends from a sender address
//! carry an unsubscribe link, and in which language.

use super::{Records, RecordsError, account_key};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsubscribeConfig {
    pub address: String,
    /// "0" (no link) or a language code "1".."12".
    pub config: String,
    /// 0 off, 1 on.
    pub status: i64,
}

fn key(account: &str, address: &str) -> String {
    account_key(account, &format!("unsubscribe:{address}"))
}

fn index(account: &str) -> String {
    account_key(account, "unsubscribe")
}

impl Records {
    /// The unsubscribe link's language for a send: the request's option
    /// ("0" for none), else the sender address's setting when it is on.
    pub async fn unsubscribe_language(
        &self,
        account: &str,
        address: &str,
        option: &str,
    ) -> Result<Option<u8>, RecordsError> {
        if !option.is_empty() {
            return Ok(language(option));
        }
        Ok(match self.unsubscribe_config(account, address).await? {
            Some(u) if u.status == 1 => language(&u.config),
            _ => None,
        })
    }

    /// False when the address already has a setting.
    pub async fn create_unsubscribe_config(
        &self,
        account: &str,
        c: &UnsubscribeConfig,
    ) -> Result<bool, RecordsError> {
        if !self.create(&key(account, &c.address), c).await? {
            return Ok(false);
        }
        self.store
            .set_add(&index(account), &c.address, None)
            .await?;
        Ok(true)
    }

    pub async fn unsubscribe_config(
        &self,
        account: &str,
        address: &str,
    ) -> Result<Option<UnsubscribeConfig>, RecordsError> {
        self.load(&key(account, address)).await
    }

    pub async fn list_unsubscribe_configs(
        &self,
        account: &str,
    ) -> Result<Vec<UnsubscribeConfig>, RecordsError> {
        let mut all: Vec<UnsubscribeConfig> =
            self.load_all(&index(account), |a| key(account, a)).await?;
        all.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(all)
    }

    /// False when the address has no setting.
    pub async fn update_unsubscribe_config(
        &self,
        account: &str,
        c: &UnsubscribeConfig,
    ) -> Result<bool, RecordsError> {
        if self
            .unsubscribe_config(account, &c.address)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.save(&key(account, &c.address), c).await?;
        Ok(true)
    }

    pub async fn delete_unsubscribe_config(
        &self,
        account: &str,
        address: &str,
    ) -> Result<bool, RecordsError> {
        self.store.set_remove(&index(account), address).await?;
        Ok(self.store.delete(&key(account, address)).await?)
    }
}

/// The language of an `Unsubscribe` value: Some(1..=12), None for "0",
/// empty or anything else.
pub fn language(option: &str) -> Option<u8> {
    option
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|c| (1..=12).contains(c))
}
