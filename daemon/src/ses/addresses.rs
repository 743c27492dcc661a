//! Sender addresses: an address on one of the account's verified domains,
//! with a display name, and an optional SMTP AUTH password so applications
//! can submit over SMTP as that address.

use super::{Records, RecordsError, account_key};
use aws_lc_rs::pbkdf2;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderAddress {
    pub address: String,
    pub account: String,
    pub sender_name: String,
    pub created_at_ms: i64,
    /// `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`.
    #[serde(default)]
    pub smtp_password: Option<String>,
    /// Where this address's events are POSTed, instead of the account's.
    #[serde(default)]
    pub callback_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not an email address")]
    Invalid(String),
    #[error("the sender name {0:?} may not contain ':', '<', '>', quotes or line breaks")]
    BadName(String),
    #[error("the domain {0} is not a sender domain of this account")]
    NoDomain(String),
    #[error("the domain {0} is not verified yet")]
    NotVerified(String),
    #[error("the address {0} already exists")]
    Exists(String),
    #[error("an account has at most {0} sender addresses")]
    TooMany(usize),
    #[error("the address {0} is not a sender address of this account")]
    NotFound(String),
    #[error(
        "the password must be 10 to 20 characters and contain upper-case letters, lower-case letters and digits"
    )]
    WeakPassword,
    #[error("the new password is the same as the current one")]
    SamePassword,
    #[error(transparent)]
    Records(#[from] RecordsError),
}

impl From<crate::store::StoreError> for AddressError {
    fn from(e: crate::store::StoreError) -> Self {
        AddressError::Records(e.into())
    }
}

fn record_key(address: &str) -> String {
    format!("sender:{address}")
}

fn index(account: &str) -> String {
    account_key(account, "senders")
}

/// An address in the API, canonical (see [`crate::address`]): ASCII,
/// on a fully-qualified domain name (no address literal); None when it is
/// not one.
pub fn normalize_address(address: &str) -> Option<String> {
    let mailbox = crate::address::Mailbox::parse(address.trim(), false).ok()?;
    (mailbox.is_qualified() && !mailbox.is_literal()).then(|| mailbox.to_string())
}

const PBKDF2_ITERATIONS: u32 = 100_000;

fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(out)
    )
}

fn password_matches(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(iter), Ok(salt), Ok(hash)) = (
        iter.parse().ok().and_then(NonZeroU32::new),
        B64.decode(salt),
        B64.decode(hash),
    ) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iter,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn strong_password(p: &str) -> bool {
    (10..=20).contains(&p.chars().count())
        && p.chars().any(|c| c.is_ascii_uppercase())
        && p.chars().any(|c| c.is_ascii_lowercase())
        && p.chars().any(|c| c.is_ascii_digit())
}

impl Records {
    pub async fn create_address(
        &self,
        account: &str,
        address: &str,
        sender_name: &str,
    ) -> Result<SenderAddress, AddressError> {
        let address =
            normalize_address(address).ok_or_else(|| AddressError::Invalid(address.into()))?;
        if sender_name.contains([':', '<', '>', '"', '\r', '\n']) || sender_name.len() > 256 {
            return Err(AddressError::BadName(sender_name.into()));
        }
        let domain = crate::net::domain_of(&address);
        let identity = self
            .identity(account, &domain)
            .await?
            .ok_or_else(|| AddressError::NoDomain(domain.clone()))?;
        if !identity.verified {
            return Err(AddressError::NotVerified(domain));
        }
        let max = self.settings.platform.max_addresses;
        if self.store.set_members(&index(account)).await?.len() >= max {
            return Err(AddressError::TooMany(max));
        }
        let record = SenderAddress {
            address: address.clone(),
            account: account.to_string(),
            sender_name: sender_name.trim().to_string(),
            created_at_ms: self.store.now_ms(),
            smtp_password: None,
            callback_url: None,
        };
        // The domain is this account's, so the address cannot be another's.
        if !self.create(&record_key(&address), &record).await? {
            return Err(AddressError::Exists(address));
        }
        self.store.set_add(&index(account), &address, None).await?;
        Ok(record)
    }

    /// The account's sender address (None when it is not theirs).
    pub async fn address(
        &self,
        account: &str,
        address: &str,
    ) -> Result<Option<SenderAddress>, RecordsError> {
        let Some(address) = normalize_address(address) else {
            return Ok(None);
        };
        Ok(self
            .load::<SenderAddress>(&record_key(&address))
            .await?
            .filter(|a| a.account == account))
    }

    pub async fn list_addresses(&self, account: &str) -> Result<Vec<SenderAddress>, RecordsError> {
        let mut all: Vec<SenderAddress> = self.load_all(&index(account), record_key).await?;
        all.retain(|a| a.account == account);
        all.sort_by_key(|a| a.created_at_ms);
        Ok(all)
    }

    pub async fn delete_address(&self, account: &str, address: &str) -> Result<(), AddressError> {
        let record = self
            .address(account, address)
            .await?
            .ok_or_else(|| AddressError::NotFound(address.into()))?;
        self.store.delete(&record_key(&record.address)).await?;
        self.store
            .set_remove(&index(account), &record.address)
            .await?;
        Ok(())
    }

    pub async fn set_smtp_password(
        &self,
        account: &str,
        address: &str,
        password: &str,
    ) -> Result<(), AddressError> {
        let mut record = self
            .address(account, address)
            .await?
            .ok_or_else(|| AddressError::NotFound(address.into()))?;
        if !strong_password(password) {
            return Err(AddressError::WeakPassword);
        }
        if record
            .smtp_password
            .as_deref()
            .is_some_and(|old| password_matches(old, password))
        {
            return Err(AddressError::SamePassword);
        }
        record.smtp_password = Some(hash_password(password));
        self.save(&record_key(&record.address), &record).await?;
        Ok(())
    }

    /// Sets (or, with an empty URL, clears) the address's callback URL.
    pub async fn set_address_callback(
        &self,
        account: &str,
        address: &str,
        url: &str,
    ) -> Result<SenderAddress, AddressError> {
        let mut record = self
            .address(account, address)
            .await?
            .ok_or_else(|| AddressError::NotFound(address.into()))?;
        record.callback_url = (!url.is_empty()).then(|| url.to_string());
        self.save(&record_key(&record.address), &record).await?;
        Ok(record)
    }

    /// SMTP AUTH as a sender address: its account, when the password is
    /// right and the account is enabled.
    pub async fn authenticate_address(
        &self,
        address: &str,
        password: &str,
    ) -> Result<Option<String>, RecordsError> {
        let Some(address) = normalize_address(address) else {
            return Ok(None);
        };
        let Some(record) = self.load::<SenderAddress>(&record_key(&address)).await? else {
            return Ok(None);
        };
        let Some(stored) = record.smtp_password.clone() else {
            return Ok(None);
        };
        let password = password.to_string();
        // PBKDF2 is deliberately slow: off the async workers.
        let ok = tokio::task::spawn_blocking(move || password_matches(&stored, &password))
            .await
            .unwrap_or(false);
        if !ok {
            return Ok(None);
        }
        let enabled = self
            .account(&record.account)
            .await?
            .is_some_and(|a| !a.disabled);
        Ok(enabled.then_some(record.account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("Secret12345");
        assert!(password_matches(&h, "Secret12345"));
        assert!(!password_matches(&h, "Secret12346"));
        assert!(!password_matches("garbage", "Secret12345"));
        assert!(strong_password("Abcdefgh12"));
        assert!(!strong_password("abcdefgh12"));
        assert!(!strong_password("Abc12"));
        assert!(!strong_password("ABCDEFGH12"));
        assert!(!strong_password(&format!("Ab1{}", "x".repeat(18))));
    }

    #[test]
    fn addresses_are_checked() {
        assert_eq!(
            normalize_address("News@Shop.Example").as_deref(),
            Some("News@shop.example")
        );
        assert_eq!(normalize_address("no-at-sign"), None);
        assert_eq!(normalize_address("a..b@shop.example"), None);
        assert_eq!(normalize_address("a b@shop.example"), None);
        assert_eq!(normalize_address("a@localhost"), None);
    }
}
