//! Sender domains (identities). Any account may claim a domain; each claim
//! gets DKIM keys of its own (RSA 1024, 2048, or both), and the first
//! claimant whose four records (MX, SPF include, its DKIM key, DMARC) are
//! found in DNS owns the domain: the other claims are dropped, with the
//! reason. A claim owns nothing: it blocks no one, sends nothing, and sees
//! none of the domain's data. A subdomain of a domain another account has
//! proven cannot be claimed. Deleting a domain forgets its reputation, its
//! blocklist entries and today's statistics, and what is older is sealed:
//! the next owner sees data from its own proof on (`owned_since_ms`).

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
    /// Since when the account has owned the domain (first proved it); the
    /// domain's data from before (another owner's) is not its to see.
    #[serde(default)]
    pub owned_since_ms: i64,
    /// A claim another account's proof overtook: why it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
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
    #[error("the domain {0} is no longer this account's: {1}")]
    Dropped(String, String),
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

/// The owner's record of a domain: the account that proved it.
fn record_key(domain: &str) -> String {
    format!("identity:{domain}")
}

/// An account's claim to a domain it has not proven.
fn claim_key(domain: &str, account: &str) -> String {
    format!("identity-claim:{domain}:{account}")
}

/// The accounts that claim a domain.
fn claimants_key(domain: &str) -> String {
    format!("identity-claims:{domain}")
}

/// How long an overtaken claim is remembered, to say why it went.
const DROPPED_KEPT: std::time::Duration = std::time::Duration::from_secs(90 * 86400);

/// `domain`'s parents that could be registered domains: `a.shop.example`
/// has `shop.example` (and not the bare `example`).
fn parents(domain: &str) -> impl Iterator<Item = &str> {
    domain
        .match_indices('.')
        .map(move |(i, _)| &domain[i + 1..])
        .filter(|p| p.contains('.'))
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
        // A domain the config file gives an account is that account's, and
        // so are its subdomains.
        let configured_elsewhere = |d: &str| {
            self.settings
                .accounts
                .iter()
                .any(|a| a.name != account && a.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
        };
        if configured_elsewhere(&domain) || parents(&domain).any(configured_elsewhere) {
            return Err(IdentityError::OwnedByOther(domain));
        }
        if let Some(owner) = self.load::<Identity>(&record_key(&domain)).await? {
            if owner.account == account {
                return Err(IdentityError::Exists(domain));
            }
            if owner.verified {
                return Err(IdentityError::OwnedByOther(domain));
            }
        }
        for parent in parents(&domain) {
            let owner = self.load::<Identity>(&record_key(parent)).await?;
            if owner.is_some_and(|o| o.verified && o.account != account) {
                return Err(IdentityError::OwnedByOther(domain.clone()));
            }
        }
        let claim = self.load::<Identity>(&claim_key(&domain, account)).await?;
        if claim.is_some_and(|c| c.dropped.is_none()) {
            return Err(IdentityError::Exists(domain));
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
            owned_since_ms: 0,
            dropped: None,
        };
        crate::ses::dkim::replace_keys_in(
            &self.store,
            &crate::ses::dkim::claim_slot(&domain, account),
            &domain,
            &self.settings.dkim.selector,
            key_sizes(dkim_option),
        )
        .await?;
        self.save(&claim_key(&domain, account), &identity).await?;
        self.store
            .set_add(&claimants_key(&domain), account, None)
            .await?;
        self.store.set_add(&index(account), &domain, None).await?;
        let attributes = self.expected_attributes(&identity).await?;
        Ok((identity, attributes))
    }

    /// The owner of `domain`, if an account has proven it and its records
    /// still pass: who may send as it, whose data it is.
    pub async fn identity_of_domain(&self, domain: &str) -> Result<Option<Identity>, RecordsError> {
        Ok(self
            .load::<Identity>(&record_key(domain))
            .await?
            .filter(|i| i.verified))
    }

    /// The account's domains that are its own (proven, records passing):
    /// the ones whose data it may see and change.
    pub async fn owned_identities(&self, account: &str) -> Result<Vec<Identity>, RecordsError> {
        let mut all = self.list_identities(account).await?;
        all.retain(|i| i.verified && i.dropped.is_none());
        Ok(all)
    }

    /// The account's identity for `domain`: its own, or its claim (None
    /// when it has neither; a dropped claim says why it went).
    async fn identity_or_dropped(
        &self,
        account: &str,
        domain: &str,
    ) -> Result<Option<Identity>, RecordsError> {
        let Some(domain) = normalize_domain(domain) else {
            return Ok(None);
        };
        if let Some(owner) = self.load::<Identity>(&record_key(&domain)).await?
            && owner.account == account
        {
            return Ok(Some(owner));
        }
        self.load::<Identity>(&claim_key(&domain, account)).await
    }

    /// The account's identity for `domain` (None when it is not theirs).
    pub async fn identity(
        &self,
        account: &str,
        domain: &str,
    ) -> Result<Option<Identity>, RecordsError> {
        Ok(self
            .identity_or_dropped(account, domain)
            .await?
            .filter(|i| i.dropped.is_none()))
    }

    pub async fn owned_identity(
        &self,
        account: &str,
        domain: &str,
    ) -> Result<Identity, IdentityError> {
        match self.identity_or_dropped(account, domain).await? {
            Some(i) => match i.dropped {
                Some(reason) => Err(IdentityError::Dropped(i.domain, reason)),
                None => Ok(i),
            },
            None => Err(IdentityError::NotFound(domain.to_string())),
        }
    }

    /// The domain's reputation level and today's quota, from the policy
    /// ((0, 0) without a reputation hook), or why the policy cannot say.
    pub async fn reputation(&self, account: &str, domain: &str) -> Result<(i64, i64), String> {
        let query = serde_json::json!({
            "domain": domain,
            "account": account,
            "kind": "query",
            "count": 0,
            "now": self.store.now_ms(),
        });
        match self
            .policy
            .call(crate::policy::hooks::Reputation, &query)
            .await
        {
            Ok(Some(st)) => Ok((
                st["level"].as_i64().unwrap_or(0),
                st["daily_limit"].as_i64().unwrap_or(0),
            )),
            Ok(None) => Ok((0, 0)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The account's domains, owned and claimed.
    pub async fn list_identities(&self, account: &str) -> Result<Vec<Identity>, RecordsError> {
        let mut all = Vec::new();
        for domain in self.store.set_members(&index(account)).await? {
            if let Some(i) = self.identity(account, &domain).await? {
                all.push(i);
            }
        }
        all.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(all)
    }

    pub async fn delete_identity(&self, account: &str, domain: &str) -> Result<(), IdentityError> {
        let identity = match self.owned_identity(account, domain).await {
            Err(IdentityError::Dropped(d, _)) => {
                // Only its memory is left.
                self.store.delete(&claim_key(&d, account)).await?;
                return Ok(());
            }
            other => other?,
        };
        let d = identity.domain.clone();
        let owner = self
            .load::<Identity>(&record_key(&d))
            .await?
            .is_some_and(|o| o.account == account);
        if owner {
            let suffix = format!("@{d}");
            if self
                .list_addresses(account)
                .await?
                .iter()
                .any(|a| a.address.ends_with(&suffix))
            {
                return Err(IdentityError::HasAddresses(d));
            }
            self.store.delete(&record_key(&d)).await?;
            crate::ses::dkim::delete_keys(&self.store, &d).await?;
            self.forget_domain_data(&d).await?;
        } else {
            self.store.delete(&claim_key(&d, account)).await?;
            crate::ses::dkim::delete_keys(&self.store, &crate::ses::dkim::claim_slot(&d, account))
                .await?;
            self.store.set_remove(&claimants_key(&d), account).await?;
        }
        self.store.set_remove(&index(account), &d).await?;
        Ok(())
    }

    /// Removes every member of `set` (a set is not a key: `delete` leaves
    /// it on the embedded store).
    pub(crate) async fn clear_set(&self, set: &str) -> Result<(), RecordsError> {
        for member in self.store.set_members(set).await? {
            self.store.set_remove(set, &member).await?;
        }
        Ok(())
    }

    /// What a domain's next owner must not inherit: its reputation (the
    /// policy forgets it), which blocklist entries it caused, today's
    /// statistics. Older statistics and abuse reports stay, sealed by the
    /// next owner's `owned_since_ms`.
    async fn forget_domain_data(&self, domain: &str) -> Result<(), RecordsError> {
        let forget = serde_json::json!({
            "domain": domain,
            "account": "",
            "kind": "forget",
            "count": 0,
            "now": self.store.now_ms(),
        });
        if let Err(e) = self
            .policy
            .call(crate::policy::hooks::Reputation, &forget)
            .await
        {
            tracing::error!(%domain, error = %e, "the policy did not forget the domain's reputation");
        }
        self.forget_blocklist_entries(domain).await?;
        let today = self.day(self.store.now_ms());
        let providers = crate::ses::stats::providers_key(domain, &today);
        for provider in self.store.set_members(&providers).await? {
            for metric in crate::ses::stats::METRICS {
                self.store
                    .delete(&crate::ses::stats::counter_key(
                        domain,
                        &today,
                        &provider,
                        metric.name(),
                    ))
                    .await?;
            }
        }
        self.clear_set(&providers).await
    }

    /// Checks DNS again (and, given a new DKIMOption, makes new keys first).
    /// A claim whose records all pass makes the account the domain's owner.
    pub async fn verify_identity(
        &self,
        account: &str,
        domain: &str,
        new_dkim_option: Option<i64>,
    ) -> Result<(Identity, Vec<DnsAttribute>), IdentityError> {
        let mut identity = self.owned_identity(account, domain).await?;
        let d = identity.domain.clone();
        let owner = self.load::<Identity>(&record_key(&d)).await?;
        let is_owner = owner.as_ref().is_some_and(|o| o.account == account);
        let slot = if is_owner {
            d.clone()
        } else {
            crate::ses::dkim::claim_slot(&d, account)
        };
        if let Some(option) = new_dkim_option {
            let option = u8::try_from(option)
                .ok()
                .filter(|o| *o <= 2)
                .ok_or(IdentityError::DkimOption(option))?;
            if option != identity.dkim_option {
                crate::ses::dkim::replace_keys_in(
                    &self.store,
                    &slot,
                    &d,
                    &self.settings.dkim.selector,
                    key_sizes(option),
                )
                .await?;
                identity.dkim_option = option;
                identity.verified = false;
            }
        }
        let mut attributes = self.attributes_in(&identity, &slot).await?;
        self.look_up(&mut attributes).await;
        if attributes.iter().any(|a| a.unknown) {
            // A DNS outage says nothing about the records: nothing changes.
            return Ok((identity, attributes));
        }
        let verified = attributes.iter().filter(|a| a.required).all(|a| a.ok);
        let return_path = attributes.iter().any(|a| !a.required)
            && attributes.iter().filter(|a| !a.required).all(|a| a.ok);
        if !is_owner {
            identity.return_path = return_path;
            if verified {
                if owner.is_some_and(|o| o.verified) {
                    // Another account proved it and its records still pass.
                    return Err(IdentityError::OwnedByOther(d));
                }
                identity = self.take_ownership(identity, &slot).await?;
            } else if new_dkim_option.is_some() {
                self.save(&claim_key(&d, account), &identity).await?;
            }
            return Ok((identity, attributes));
        }
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

    /// A claim proven: its account owns the domain from now, signs with the
    /// claim's keys, and every other claim (and a former owner whose
    /// records stopped passing) is dropped with the reason.
    async fn take_ownership(
        &self,
        mut identity: Identity,
        slot: &str,
    ) -> Result<Identity, IdentityError> {
        let (d, account) = (identity.domain.clone(), identity.account.clone());
        let now = self.store.now_ms();
        let former = self.load::<Identity>(&record_key(&d)).await?;
        identity.verified = true;
        identity.verified_at_ms = Some(now);
        identity.owned_since_ms = now;
        self.save(&record_key(&d), &identity).await?;
        crate::ses::dkim::move_keys(&self.store, slot, &d).await?;
        self.store.delete(&claim_key(&d, &account)).await?;
        let reason = format!(
            "another account proved the domain through DNS on {}",
            crate::clock::format_ms(now)
        );
        let mut others = self.store.set_members(&claimants_key(&d)).await?;
        if let Some(f) = former.filter(|f| f.account != account) {
            // Its reputation and blocklist entries were another owner's.
            self.forget_domain_data(&d).await?;
            others.push(f.account);
        }
        for other in others.iter().filter(|o| **o != account) {
            let dropped = Identity {
                dropped: Some(reason.clone()),
                verified: false,
                account: other.clone(),
                ..identity.clone()
            };
            self.store
                .put(
                    &claim_key(&d, other),
                    &crate::store::encode(&dropped),
                    Some(DROPPED_KEPT),
                )
                .await?;
            crate::ses::dkim::delete_keys(&self.store, &crate::ses::dkim::claim_slot(&d, other))
                .await?;
            self.store.set_remove(&index(other), &d).await?;
            tracing::info!(domain = %d, account = %other, owner = %account, "sender domain claim dropped: another account proved the domain");
        }
        self.clear_set(&claimants_key(&d)).await?;
        tracing::info!(domain = %d, %account, "sender domain proven: the account owns it");
        Ok(identity)
    }

    /// The records to publish, with nothing found yet.
    pub async fn expected_attributes(
        &self,
        identity: &Identity,
    ) -> Result<Vec<DnsAttribute>, RecordsError> {
        let owner = self
            .load::<Identity>(&record_key(&identity.domain))
            .await?
            .is_some_and(|o| o.account == identity.account);
        let slot = if owner {
            identity.domain.clone()
        } else {
            crate::ses::dkim::claim_slot(&identity.domain, &identity.account)
        };
        self.attributes_in(identity, &slot).await
    }

    /// The records to publish for the keys kept in `slot`, nothing found
    /// yet.
    async fn attributes_in(
        &self,
        identity: &Identity,
        slot: &str,
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
        for key in crate::ses::dkim::load_keys(&self.store, slot).await? {
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
            let texts: Vec<String> = match self.resolver.txt(&fqdn).await {
                Ok(texts) => texts,
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

/// The published DKIM record carries our public key (spacing aside): the
/// same key material, as a SubjectPublicKeyInfo or, as Kiln published RSA
/// keys before, a PKCS#1 RSAPublicKey.
fn dkim_matches(found: &str, expected: &str) -> bool {
    use base64::Engine;
    let p = |t: &str| {
        t.split(';')
            .filter_map(|tag| tag.split_once('='))
            .find(|(k, _)| k.trim() == "p")
            .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect::<String>())
    };
    let (Some(a), Some(b)) = (p(found), p(expected)) else {
        return false;
    };
    if a.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let key = |text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|der| crate::ses::dkim::rsa_pkcs1(&der))
    };
    matches!((key(&a), key(&b)), (Some(x), Some(y)) if x == y)
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

    /// A key published by an older Kiln (PKCS#1) still verifies the
    /// domain: the key material is compared, not its wrapping.
    #[test]
    fn either_form_of_one_rsa_key_matches() {
        use base64::Engine;
        let key = crate::ses::dkim::DkimKey::generate_sized(
            "d.test",
            "s",
            crate::config::DkimAlgorithm::Rsa,
            1024,
        )
        .unwrap();
        let expected = key.txt_record();
        let spki = base64::engine::general_purpose::STANDARD
            .decode(key.published_key())
            .unwrap();
        let pkcs1 = crate::ses::dkim::rsa_pkcs1(&spki).unwrap();
        assert_ne!(spki, pkcs1);
        let old = format!(
            "v=DKIM1; k=rsa; p={}",
            base64::engine::general_purpose::STANDARD.encode(&pkcs1)
        );
        assert!(dkim_matches(&old, &expected));
        assert!(dkim_matches(&expected, &expected));
        let other = crate::ses::dkim::DkimKey::generate_sized(
            "d.test",
            "s",
            crate::config::DkimAlgorithm::Rsa,
            1024,
        )
        .unwrap();
        assert!(!dkim_matches(&other.txt_record(), &expected));
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
