//! API accounts kept in the store (created with `kiln account create`), with
//! their SecretId/SecretKey. Accounts from the config file work as well;
//! store accounts may not take their names.

use super::{Records, RecordsError, random_token};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountRecord {
    pub name: String,
    pub secret_id: String,
    pub secret_key: String,
    #[serde(default)]
    pub disabled: bool,
    pub created_at_ms: i64,
    /// Where events are POSTed (a sender address's own URL wins).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Signs every callback (HMAC-SHA256); made with the account.
    #[serde(default)]
    pub callback_secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account name {0:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    #[error("account {0} already exists")]
    Exists(String),
    #[error("account {0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Records(#[from] RecordsError),
}

const INDEX: &str = "accounts";

fn record_key(name: &str) -> String {
    format!("account:{name}")
}

fn secret_key_of(secret_id: &str) -> String {
    format!("account-sid:{secret_id}")
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn new_secret_id() -> String {
    format!("AKID{}", random_token(32))
}

impl Records {
    pub async fn create_account(&self, name: &str) -> Result<AccountRecord, AccountError> {
        if !valid_name(name) {
            return Err(AccountError::InvalidName(name.to_string()));
        }
        if self.settings.accounts.iter().any(|a| a.name == name) {
            return Err(AccountError::Exists(name.to_string()));
        }
        let record = AccountRecord {
            name: name.to_string(),
            secret_id: new_secret_id(),
            secret_key: random_token(32),
            disabled: false,
            created_at_ms: self.store.now_ms(),
            callback_url: None,
            callback_secret: Some(random_token(40)),
        };
        if !self.create(&record_key(name), &record).await? {
            return Err(AccountError::Exists(name.to_string()));
        }
        self.store
            .put(&secret_key_of(&record.secret_id), name.as_bytes(), None)
            .await
            .map_err(RecordsError::from)?;
        self.store
            .set_add(INDEX, name, None)
            .await
            .map_err(RecordsError::from)?;
        Ok(record)
    }

    pub async fn account(&self, name: &str) -> Result<Option<AccountRecord>, RecordsError> {
        self.load(&record_key(name)).await
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountRecord>, RecordsError> {
        let mut all: Vec<AccountRecord> = self.load_all(INDEX, record_key).await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The account a SecretId belongs to.
    pub async fn account_by_secret_id(
        &self,
        secret_id: &str,
    ) -> Result<Option<AccountRecord>, RecordsError> {
        let Some(name) = self.store.get(&secret_key_of(secret_id)).await? else {
            return Ok(None);
        };
        let name = String::from_utf8_lossy(&name).into_owned();
        Ok(self
            .account(&name)
            .await?
            .filter(|a| a.secret_id == secret_id))
    }

    async fn update_account(
        &self,
        name: &str,
        change: impl FnOnce(&mut AccountRecord),
    ) -> Result<AccountRecord, AccountError> {
        let mut record = self
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NotFound(name.to_string()))?;
        change(&mut record);
        self.save(&record_key(name), &record).await?;
        Ok(record)
    }

    pub async fn set_account_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> Result<AccountRecord, AccountError> {
        self.update_account(name, |r| r.disabled = disabled).await
    }

    /// Sets (or, with an empty URL, clears) the account's callback URL;
    /// makes the callback secret if the account has none.
    pub async fn set_account_callback(
        &self,
        name: &str,
        url: &str,
    ) -> Result<AccountRecord, AccountError> {
        self.update_account(name, |r| {
            r.callback_url = (!url.is_empty()).then(|| url.to_string());
            if r.callback_secret.is_none() {
                r.callback_secret = Some(random_token(40));
            }
        })
        .await
    }

    /// A new SecretId and SecretKey; the old pair stops working at once.
    pub async fn rotate_account_key(&self, name: &str) -> Result<AccountRecord, AccountError> {
        let old = self
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NotFound(name.to_string()))?;
        let record = self
            .update_account(name, |r| {
                r.secret_id = new_secret_id();
                r.secret_key = random_token(32);
            })
            .await?;
        self.store
            .put(&secret_key_of(&record.secret_id), name.as_bytes(), None)
            .await
            .map_err(RecordsError::from)?;
        self.store
            .delete(&secret_key_of(&old.secret_id))
            .await
            .map_err(RecordsError::from)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn account_names() {
        assert!(valid_name("shop-1.eu_west"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a:b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
