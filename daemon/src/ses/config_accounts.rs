//! Sending accounts and their SMTP credentials (from the config for now).

use crate::config::AccountSettings;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    domains: Vec<String>,
    /// Signed in as a sender address of a store account: it may use only
    /// that account's verified domains (none means none).
    platform: bool,
}

impl Account {
    /// An account that may send only from `domains`.
    pub fn new(name: &str, domains: Vec<String>) -> Account {
        Account {
            name: name.to_string(),
            domains,
            platform: true,
        }
    }

    /// Whether the account names the domains it may send from (a config
    /// account without a list may use any domain nobody else owns).
    pub fn has_domain_list(&self) -> bool {
        !self.domains.is_empty() || self.platform
    }

    /// Whether the account may send as `sender` (envelope address).
    pub fn owns_sender(&self, sender: &str) -> bool {
        if !self.has_domain_list() {
            return true;
        }
        self.lists_domain(sender.rsplit_once('@').map(|(_, d)| d).unwrap_or(""))
    }

    pub fn lists_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

#[derive(Default)]
pub struct Accounts {
    /// Accounts from the config file, by name.
    by_name: HashMap<String, Arc<Account>>,
    by_username: HashMap<String, (String, Arc<Account>)>,
    /// SecretId → (SecretKey, account), for the API.
    by_secret_id: HashMap<String, (String, Arc<Account>)>,
}

impl Accounts {
    pub fn from_settings(list: &[AccountSettings]) -> Accounts {
        let mut accounts = Accounts::default();
        for a in list {
            let account = Arc::new(Account {
                name: a.name.clone(),
                domains: a.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                platform: false,
            });
            accounts.by_name.insert(a.name.clone(), account.clone());
            accounts
                .by_username
                .insert(a.username.clone(), (a.password.clone(), account.clone()));
            if let (Some(id), Some(key)) = (&a.secret_id, &a.secret_key) {
                accounts
                    .by_secret_id
                    .insert(id.clone(), (key.clone(), account));
            }
        }
        accounts
    }

    /// The SecretKey and account of an API SecretId.
    pub fn api_key(&self, secret_id: &str) -> Option<(String, Arc<Account>)> {
        self.by_secret_id.get(secret_id).cloned()
    }

    /// The names of the config file's accounts.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// A config-file account by name (store accounts are not here).
    pub fn configured(&self, name: &str) -> Option<&Account> {
        self.by_name.get(name).map(|a| a.as_ref())
    }

    /// The config-file account that lists `domain` among its domains.
    pub fn configured_owner(&self, domain: &str) -> Option<&str> {
        self.by_name
            .values()
            .find(|a| a.lists_domain(domain))
            .map(|a| a.name.as_str())
    }

    pub fn authenticate(&self, username: &str, password: &str) -> Option<Arc<Account>> {
        let (expected, account) = self.by_username.get(username)?;
        constant_time_eq(expected.as_bytes(), password.as_bytes()).then(|| account.clone())
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_and_scopes_senders() {
        let accounts = Accounts::from_settings(&[AccountSettings {
            name: "shop".into(),
            username: "shop".into(),
            password: "s3cret".into(),
            domains: vec!["Shop.Example".into()],
            secret_id: Some("AKIDshop".into()),
            secret_key: Some("key".into()),
            callback_url: None,
            callback_secret: None,
        }]);
        assert_eq!(
            accounts
                .api_key("AKIDshop")
                .map(|(k, a)| (k, a.name.clone())),
            Some(("key".into(), "shop".into()))
        );
        assert!(accounts.api_key("AKIDother").is_none());
        assert!(accounts.authenticate("shop", "wrong").is_none());
        assert!(accounts.authenticate("nobody", "s3cret").is_none());
        let acct = accounts.authenticate("shop", "s3cret").unwrap();
        assert!(acct.owns_sender("news@shop.example"));
        assert!(!acct.owns_sender("news@other.example"));
    }
}
