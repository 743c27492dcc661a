//! Sender domains (identities): one account owns a domain; it gets DKIM
//! keys (RSA 1024, 2048, or both), and may send once the four records
//! (MX, SPF include, DKIM, DMARC) are found in DNS.

use super::{Records, RecordsError, account_key};
use hickory_resolver::proto::rr::RData;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub domain: String,
    pub account: String,
    /// 0: RSA-1024, 1: RSA-2048, 2: both (two signatures).
    pub dkim_option: u8,
    pub created_at_ms: i64,
    pub verified: bool,
    #[serde(default)]
    pub verified_at_ms: Option<i64>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    /// The return-path subdomain's MX and SPF were found: return paths go
    /// there (`platform.return_path_label`).
    #[serde(default)]
    pub return_path: bool,
}

/// One DNS record the domain must publish, and what DNS holds now.
#[derive(Debug, Clone, Serialize)]
pub struct DnsAttribute {
    /// MX or TXT.
    pub kind: &'static str,
    pub name: String,
    pub expected: String,
    pub current: String,
    pub ok: bool,
    /// Needed for the domain to be verified (the return-path records are
    /// not: without them return paths stay on the shared bounce domain).
    #[serde(skip)]
    pub required: bool,
    /// DNS could not answer (timeout, server failure): neither found nor
    /// missing.
    #[serde(skip)]
    pub unknown: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not a domain name")]
    InvalidDomain(String),
    #[error("the domain {0} belongs to another account")]
    OwnedByOther(String),
    #[error("the domain {0} already exists in this account")]
    Exists(String),
    #[error("an account has at most {0} sender domains")]
    TooMany(usize),
    #[error("the domain {0} does not exist in this account")]
    NotFound(String),
    #[error("DKIMOption must be 0 (1024 bits), 1 (2048 bits) or 2 (both), not {0}")]
    DkimOption(i64),
    #[error("the domain {0} still has sender addresses; delete them first")]
    HasAddresses(String),
    #[error(transparent)]
    Records(#[from] RecordsError),
}

impl From<crate::store::StoreError> for IdentityError {
    fn from(e: crate::store::StoreError) -> Self {
        IdentityError::Records(e.into())
    }
}

impl From<crate::ses::dkim::DkimError> for IdentityError {
    fn from(e: crate::ses::dkim::DkimError) -> Self {
        IdentityError::Records(e.into())
    }
}

fn record_key(domain: &str) -> String {
    format!("identity:{domain}")
}

/// Where `domain`'s return paths go, if it is a verified sender domain
/// that publishes its return-path records (`platform.return_path_label`).
pub async fn return_path_domain(
    store: &crate::store::Store,
    settings: &crate::config::Settings,
    domain: &str,
) -> Option<String> {
    let rp = settings.return_path_domain(domain)?;
    let bytes = store.get(&record_key(domain)).await.ok()??;
    let identity: Identity = serde_json::from_slice(&bytes).ok()?;
    (identity.verified && identity.return_path).then_some(rp)
}

fn index(account: &str) -> String {
    account_key(account, "identities")
}

fn key_sizes(option: u8) -> &'static [usize] {
    match option {
        0 => &[1024],
        1 => &[2048],
        _ => &[2048, 1024],
    }
}

pub fn normalize_domain(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = crate::address::valid_domain(&d) && !d.starts_with('[') && d.contains('.');
    ok.then_some(d)
}

impl Records {
    pub async fn create_identity(
        &self,
        account: &str,
        domain: &str,
        dkim_option: i64,
        tags: Vec<(String, String)>,
    ) -> Result<(Identity, Vec<DnsAttribute>), IdentityError> {
        let domain =
            normalize_domain(domain).ok_or_else(|| IdentityError::InvalidDomain(domain.into()))?;
        let dkim_option = u8::try_from(dkim_option)
            .ok()
            .filter(|o| *o <= 2)
            .ok_or(IdentityError::DkimOption(dkim_option))?;
        // A domain the config file gives an account is that account's.
        if self
            .settings
            .accounts
            .iter()
            .any(|a| a.name != account && a.domains.iter().any(|d| d.eq_ignore_ascii_case(&domain)))
        {
            return Err(IdentityError::OwnedByOther(domain));
        }
        if let Some(existing) = self.load::<Identity>(&record_key(&domain)).await? {
            return Err(if existing.account == account {
                IdentityError::Exists(domain)
            } else {
                IdentityError::OwnedByOther(domain)
            });
        }
        let max = self.settings.platform.max_identities;
        if self.store.set_members(&index(account)).await?.len() >= max {
            return Err(IdentityError::TooMany(max));
        }
        let identity = Identity {
            domain: domain.clone(),
            account: account.to_string(),
            dkim_option,
            created_at_ms: self.store.now_ms(),
            verified: false,
            verified_at_ms: None,
            tags,
            return_path: false,
        };
        if !self.create(&record_key(&domain), &identity).await? {
            return Err(IdentityError::OwnedByOther(domain));
        }
        self.store.set_add(&index(account), &domain, None).await?;
        crate::ses::dkim::replace_keys(
            &self.store,
            &domain,
            &self.settings.dkim.selector,
            key_sizes(dkim_option),
        )
        .await?;
        let attributes = self.expected_attributes(&identity).await?;
        Ok((identity, attributes))
    }

    /// The identity record of `domain`, whoever owns it.
    pub async fn identity_of_domain(&self, domain: &str) -> Result<Option<Identity>, RecordsError> {
        self.load::<Identity>(&record_key(domain)).await
    }

    /// The account's identity for `domain` (None when it is not theirs).
    pub async fn identity(
        &self,
        account: &str,
        domain: &str,
    ) -> Result<Option<Identity>, RecordsError> {
        let Some(domain) = normalize_domain(domain) else {
            return Ok(None);
        };
        Ok(self
            .load::<Identity>(&record_key(&domain))
            .await?
            .filter(|i| i.account == account))
    }

    pub async fn owned_identity(
        &self,
        account: &str,
        domain: &str,
    ) -> Result<Identity, IdentityError> {
        self.identity(account, domain)
            .await?
            .ok_or_else(|| IdentityError::NotFound(domain.to_string()))
    }

    /// The domain's reputation level and today's quota, from the policy
    /// (0, 0 when it cannot say).
    pub async fn reputation(&self, account: &str, domain: &str) -> (i64, i64) {
        let query = serde_json::json!({
            "domain": domain,
            "account": account,
            "kind": "query",
            "count": 0,
            "now": self.store.now_ms(),
        });
        match self
            .policy
            .call::<_, serde_json::Value>("reputation", &query)
            .await
        {
            Ok(Some(st)) => (
                st["level"].as_i64().unwrap_or(0),
                st["daily_limit"].as_i64().unwrap_or(0),
            ),
            _ => (0, 0),
        }
    }

    pub async fn list_identities(&self, account: &str) -> Result<Vec<Identity>, RecordsError> {
        let mut all: Vec<Identity> = self.load_all(&index(account), record_key).await?;
        all.retain(|i| i.account == account);
        all.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(all)
    }

    pub async fn delete_identity(&self, account: &str, domain: &str) -> Result<(), IdentityError> {
        let identity = self.owned_identity(account, domain).await?;
        let suffix = format!("@{}", identity.domain);
        if self
            .list_addresses(account)
            .await?
            .iter()
            .any(|a| a.address.ends_with(&suffix))
        {
            return Err(IdentityError::HasAddresses(identity.domain));
        }
        self.store.delete(&record_key(&identity.domain)).await?;
        self.store
            .set_remove(&index(account), &identity.domain)
            .await?;
        crate::ses::dkim::delete_keys(&self.store, &identity.domain).await?;
        Ok(())
    }

    /// Checks DNS again (and, given a new DKIMOption, makes new keys first).
    pub async fn verify_identity(
        &self,
        account: &str,
        domain: &str,
        new_dkim_option: Option<i64>,
    ) -> Result<(Identity, Vec<DnsAttribute>), IdentityError> {
        let mut identity = self.owned_identity(account, domain).await?;
        if let Some(option) = new_dkim_option {
            let option = u8::try_from(option)
                .ok()
                .filter(|o| *o <= 2)
                .ok_or(IdentityError::DkimOption(option))?;
            if option != identity.dkim_option {
                crate::ses::dkim::replace_keys(
                    &self.store,
                    &identity.domain,
                    &self.settings.dkim.selector,
                    key_sizes(option),
                )
                .await?;
                identity.dkim_option = option;
                identity.verified = false;
            }
        }
        let mut attributes = self.expected_attributes(&identity).await?;
        self.look_up(&mut attributes).await;
        if attributes.iter().any(|a| a.unknown) {
            // A DNS outage says nothing about the records: nothing changes.
            return Ok((identity, attributes));
        }
        let verified = attributes.iter().filter(|a| a.required).all(|a| a.ok);
        let return_path = attributes.iter().any(|a| !a.required)
            && attributes.iter().filter(|a| !a.required).all(|a| a.ok);
        if verified != identity.verified
            || return_path != identity.return_path
            || new_dkim_option.is_some()
        {
            identity.verified = verified;
            identity.return_path = return_path;
            identity.verified_at_ms = verified.then(|| self.store.now_ms());
            self.save(&record_key(&identity.domain), &identity).await?;
        }
        Ok((identity, attributes))
    }

    /// The records to publish, with nothing found yet.
    pub async fn expected_attributes(
        &self,
        identity: &Identity,
    ) -> Result<Vec<DnsAttribute>, RecordsError> {
        let d = &identity.domain;
        let attr = |kind, name: String, expected: String| DnsAttribute {
            kind,
            name,
            expected,
            current: String::new(),
            ok: false,
            required: true,
            unknown: false,
        };
        let mut out = vec![
            attr("MX", d.clone(), self.settings.mx_host()),
            attr(
                "TXT",
                d.clone(),
                format!("v=spf1 include:{} ~all", self.settings.spf_include()),
            ),
        ];
        for key in crate::ses::dkim::load_keys(&self.store, d).await? {
            out.push(attr("TXT", key.dns_name(), key.txt_record()));
        }
        out.push(attr(
            "TXT",
            format!("_dmarc.{d}"),
            "v=DMARC1; p=none".into(),
        ));
        if let Some(rp) = self.settings.return_path_domain(d) {
            let spf = format!("v=spf1 include:{} ~all", self.settings.spf_include());
            for mut a in [
                attr("MX", rp.clone(), self.settings.mx_host()),
                attr("TXT", rp, spf),
            ] {
                a.required = false;
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Fills in what DNS holds for each record, and whether it passes.
    async fn look_up(&self, attributes: &mut [DnsAttribute]) {
        let spf_include = format!(
            "include:{}",
            self.settings.spf_include().to_ascii_lowercase()
        );
        for a in attributes.iter_mut() {
            let fqdn = format!("{}.", a.name);
            if a.kind == "MX" {
                let found: Vec<String> = match self.resolver.resolver().mx_lookup(fqdn).await {
                    Ok(l) => l
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::MX(mx) => Some(
                                mx.exchange
                                    .to_utf8()
                                    .trim_end_matches('.')
                                    .to_ascii_lowercase(),
                            ),
                            _ => None,
                        })
                        .collect(),
                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
                    Err(e) => {
                        a.unknown = true;
                        a.current = format!("could not look up: {e}");
                        continue;
                    }
                };
                a.ok = found.iter().any(|h| h.eq_ignore_ascii_case(&a.expected));
                a.current = found.join(",");
                continue;
            }
            let texts: Vec<String> = match self.resolver.resolver().txt_lookup(fqdn).await {
                Ok(l) => l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
                Err(e) => {
                    a.unknown = true;
                    a.current = format!("could not look up: {e}");
                    continue;
                }
            };
            let matching = texts.iter().find(|t| {
                let lower = t.to_ascii_lowercase();
                if a.expected.starts_with("v=spf1") {
                    lower.starts_with("v=spf1")
                        && lower
                            .split_whitespace()
                            .any(|w| w.trim_start_matches(['+', '~', '?']) == spf_include)
                } else if a.expected.starts_with("v=DMARC1") {
                    dmarc_ok(t)
                } else {
                    dkim_matches(t, &a.expected)
                }
            });
            a.ok = matching.is_some();
            a.current = matching
                .or_else(|| texts.first())
                .cloned()
                .unwrap_or_default();
        }
    }
}

/// A DMARC record: `v=DMARC1` first, and a `p` tag with a valid policy.
fn dmarc_ok(text: &str) -> bool {
    let tags: Vec<(String, String)> = text
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    tags.first().is_some_and(|(k, v)| k == "v" && v == "dmarc1")
        && tags
            .iter()
            .any(|(k, v)| k == "p" && matches!(v.as_str(), "none" | "quarantine" | "reject"))
}

/// The published DKIM record carries our public key (spacing aside).
fn dkim_matches(found: &str, expected: &str) -> bool {
    let p = |t: &str| {
        t.split(';')
            .filter_map(|tag| tag.split_once('='))
            .find(|(k, _)| k.trim() == "p")
            .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect::<String>())
    };
    matches!((p(found), p(expected)), (Some(a), Some(b)) if !a.is_empty() && a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmarc_needs_v_first_and_a_policy() {
        assert!(dmarc_ok("v=DMARC1; p=none"));
        assert!(dmarc_ok("v=DMARC1;p=reject; rua=mailto:x@y.z"));
        assert!(!dmarc_ok("p=none; v=DMARC1"));
        assert!(!dmarc_ok("v=DMARC1; rua=mailto:x@y.z"));
        assert!(!dmarc_ok("v=DMARC1; p=maybe"));
    }

    #[test]
    fn dkim_compares_the_key_only() {
        let expected = "v=DKIM1; k=rsa; p=MIIBabc";
        assert!(dkim_matches("v=DKIM1;k=rsa;p=MIIB abc", expected));
        assert!(!dkim_matches("v=DKIM1; k=rsa; p=MIIBabd", expected));
        assert!(!dkim_matches("v=DKIM1; k=rsa; p=", "v=DKIM1; p="));
    }

    #[test]
    fn domains_are_normalized() {
        assert_eq!(
            normalize_domain(" Mail.Shop.Example. ").as_deref(),
            Some("mail.shop.example")
        );
        assert_eq!(normalize_domain("localhost"), None);
        assert_eq!(normalize_domain("[1.2.3.4]"), None);
        assert_eq!(normalize_domain("a b.c"), None);
    }
}
