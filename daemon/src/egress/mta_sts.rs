//! MTA-STS (RFC 8461): a receiving domain's promise that its mail travels
//! only over TLS verified for the MX hosts it names. The policy is found by
//! a TXT record (`_mta-sts.DOMAIN`, `v=STSv1; id=...`) and fetched over
//! HTTPS from `mta-sts.DOMAIN`; it is kept in the store for its `max_age`,
//! so every node uses what one fetched, and fetched again when the TXT
//! record's id changes. A policy kept and not expired is used when DNS or
//! the policy host fails, as the RFC asks. Every lookup goes through
//! Kiln's resolver (`dns.nameservers`).

use crate::dns::MxResolver;
use crate::outbound_http::Destinations;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A policy file larger than this is refused (the RFC's advice: 64 KiB).
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// How long a fetch of the policy may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `max_age` the RFC allows (a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// How long this node answers from memory before it asks DNS again.
const MEMO: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A domain's policy as fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub domain: String,
    /// The TXT record's id the policy was fetched under.
    pub id: String,
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` and a domain (one label more).
    pub mx: Vec<String>,
    pub max_age_s: u64,
    pub fetched_at_ms: i64,
}

impl Policy {
    /// Whether the policy names `host` among its MX hosts.
    pub fn permits(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }

    /// For attempts and logs: `MTA-STS enforce id=...`.
    pub fn describe(&self) -> String {
        format!("MTA-STS {} id={}", self.mode.as_str(), self.id)
    }

    fn expires_at_ms(&self) -> i64 {
        self.fetched_at_ms
            .saturating_add((self.max_age_s as i64).saturating_mul(1000))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("the policy's version is not STSv1")]
    Version,
    #[error("the policy has no valid mode")]
    Mode,
    #[error("the policy has no valid max_age")]
    MaxAge,
    #[error("an enforce or testing policy names no mx")]
    NoMx,
}

/// The id of an MTA-STS TXT record (`v=STSv1; id=...`), if it is one.
pub fn txt_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let id = fields.find_map(|f| f.strip_prefix("id="))?;
    (!id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

/// The mode, MX patterns and max_age of a policy file (RFC 8461 3.2):
/// `key: value` lines, CRLF or LF; unknown keys are ignored.
pub fn parse_policy(body: &str) -> Result<(Mode, Vec<String>, u64), PolicyError> {
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in body.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = match value {
                    "enforce" => Some(Mode::Enforce),
                    "testing" => Some(Mode::Testing),
                    "none" => Some(Mode::None),
                    _ => return Err(PolicyError::Mode),
                }
            }
            "max_age" => {
                max_age = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.len() <= 10)
                    .map(|v| v.min(MAX_AGE_LIMIT))
            }
            "mx" if !value.is_empty() => mx.push(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(PolicyError::Version);
    }
    let mode = mode.ok_or(PolicyError::Mode)?;
    let max_age = max_age.ok_or(PolicyError::MaxAge)?;
    if mode != Mode::None && mx.is_empty() {
        return Err(PolicyError::NoMx);
    }
    Ok((mode, mx, max_age))
}

/// RFC 8461 4.1: a pattern is a host name, matched whole, or `*.` and a
/// domain, matched by a host with exactly one more label on the left.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => host == pattern,
    }
}

/// What applies to a delivery to one domain.
#[derive(Debug, Clone)]
pub enum Found {
    /// The domain publishes no policy (or it could not be had, and none is
    /// kept): deliver as without MTA-STS.
    Nothing,
    Policy(Arc<Policy>),
    /// The domain publishes a policy that could not be had, and none is
    /// kept: delivered as without MTA-STS, the failure reported (its RFC
    /// 8460 result type).
    Unusable(&'static str),
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("Content-Type {0:?}, not text/plain")]
    ContentType(String),
    #[error("larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl FetchError {
    /// What a TLS report calls it (RFC 8460 4.3.2).
    fn result_type(&self) -> &'static str {
        match self {
            FetchError::Policy(_) => "sts-policy-invalid",
            FetchError::Http(text) if text.contains("certificate") => "sts-webpki-invalid",
            _ => "sts-policy-fetch-error",
        }
    }
}

pub struct MtaSts {
    resolver: Arc<MxResolver>,
    http: reqwest::Client,
    store: Store,
    memo: Mutex<HashMap<String, (Instant, Found)>>,
}

impl MtaSts {
    /// `tls`: the verifying client configuration (the platform's roots and
    /// `delivery.tls_ca_file`).
    pub fn new(
        resolver: Arc<MxResolver>,
        tls: Arc<rustls::ClientConfig>,
        store: Store,
        allowed: &Destinations,
    ) -> reqwest::Result<MtaSts> {
        let http = https_client(&resolver, &tls, FETCH_TIMEOUT, allowed)?;
        Ok(MtaSts {
            resolver,
            http,
            store,
            memo: Mutex::new(HashMap::new()),
        })
    }

    /// The policy that applies to mail for `domain` now.
    pub async fn policy_for(&self, domain: &str) -> Found {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some((at, found)) = self.memo().get(&domain)
            && at.elapsed() < MEMO
        {
            return found.clone();
        }
        let found = self.look_up(&domain).await;
        self.memo().insert(domain, (Instant::now(), found.clone()));
        found
    }

    /// Why `domain`'s policy could not be had, when it was looked up
    /// last (for its TLS report).
    pub fn failure_for(&self, domain: &str) -> Option<&'static str> {
        match self
            .memo()
            .get(&domain.trim_end_matches('.').to_ascii_lowercase())
        {
            Some((_, Found::Unusable(why))) => Some(why),
            _ => None,
        }
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Found)>> {
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn look_up(&self, domain: &str) -> Found {
        let now = self.store.now_ms();
        let kept = self.kept(domain).await.filter(|p| p.expires_at_ms() > now);
        let id = match self.txt_id(domain).await {
            Ok(Some(id)) => id,
            // No record, or DNS failing: a policy kept is still the
            // domain's word until it expires (RFC 8461 5.1).
            Ok(None) | Err(()) => {
                return kept.map_or(Found::Nothing, |p| Found::Policy(Arc::new(p)));
            }
        };
        if let Some(p) = kept.as_ref().filter(|p| p.id == id) {
            return Found::Policy(Arc::new(p.clone()));
        }
        match self.fetch(domain).await {
            Ok((mode, mx, max_age_s)) => {
                let policy = Policy {
                    domain: domain.to_string(),
                    id,
                    mode,
                    mx,
                    max_age_s,
                    fetched_at_ms: now,
                };
                if let Err(e) = self
                    .store
                    .put(
                        &key(domain),
                        &crate::store::encode(&policy),
                        Some(Duration::from_secs(max_age_s.max(1))),
                    )
                    .await
                {
                    tracing::warn!(%domain, error = %e, "could not keep an MTA-STS policy");
                }
                tracing::info!(%domain, policy = %policy.describe(), "MTA-STS policy fetched");
                Found::Policy(Arc::new(policy))
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, kept = kept.is_some(), "MTA-STS policy could not be fetched");
                kept.map_or(Found::Unusable(e.result_type()), |p| {
                    Found::Policy(Arc::new(p))
                })
            }
        }
    }

    async fn kept(&self, domain: &str) -> Option<Policy> {
        kept_policy(&self.store, domain).await
    }

    /// The id of `_mta-sts.DOMAIN`'s record; None when there is none; an
    /// error when DNS did not answer.
    async fn txt_id(&self, domain: &str) -> Result<Option<String>, ()> {
        let ids: Vec<String> = self
            .resolver
            .txt(&format!("_mta-sts.{domain}"))
            .await
            .map_err(|_| ())?
            .iter()
            .filter_map(|t| txt_id(t))
            .collect();
        // More than one record is no record (RFC 8461 3.1).
        Ok((ids.len() == 1).then(|| ids[0].clone()))
    }

    async fn fetch(&self, domain: &str) -> Result<(Mode, Vec<String>, u64), FetchError> {
        let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
        let mut response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| FetchError::Http(crate::outbound_http::error_chain(&e)))?;
        if response.status().as_u16() != 200 {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
        {
            return Err(FetchError::ContentType(content_type));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Http(crate::outbound_http::error_chain(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY_BYTES {
                return Err(FetchError::TooLarge);
            }
        }
        Ok(parse_policy(&String::from_utf8_lossy(&body))?)
    }
}

/// The policy kept in the store for `domain`, expired or not.
pub async fn kept_policy(store: &Store, domain: &str) -> Option<Policy> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let raw = store.get(&key(&domain)).await.ok()??;
    crate::store::decode(&key(&domain), &raw).ok()
}

fn key(domain: &str) -> String {
    format!("mta_sts:{domain}")
}

/// The setting that lists internal networks the HTTPS hosts a receiving
/// domain names may be at.
pub const HTTPS_ALLOW_NETWORKS: &str = "delivery.https_allow_networks";

/// An HTTPS client for hosts a receiving domain names (its policy host,
/// its TLS report endpoint): names resolved by Kiln's resolver as the MX
/// hosts are, certificates verified with `tls`, no redirects, no proxy,
/// and only to public addresses or the networks `allowed` lists. Whoever
/// holds a recipient's domain chooses these hosts: one at 127.0.0.1 or
/// 10.0.0.5 would make Kiln fetch from, or post to, the operator's own
/// services. A URL's address literal is checked by the caller
/// (`Destinations::check_url`): no resolver sees it.
pub fn https_client(
    resolver: &Arc<MxResolver>,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    allowed: &Destinations,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .dns_resolver(Arc::new(ThroughKiln {
            resolver: resolver.clone(),
            allowed: allowed.clone(),
        }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(true)
        .timeout(timeout)
        .build()
}

/// Names resolved by Kiln's resolver, as the MX hosts are, keeping only
/// the addresses a request may go to.
struct ThroughKiln {
    resolver: Arc<MxResolver>,
    allowed: Destinations,
}

impl reqwest::dns::Resolve for ThroughKiln {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (resolver, allowed) = (self.resolver.clone(), self.allowed.clone());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = resolver.resolver().lookup_ip(host.as_str()).await?;
            allowed.resolved(host, found.iter(), HTTPS_ALLOW_NETWORKS)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfcs_examples_parse() {
        let body = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let (mode, mx, max_age) = parse_policy(body).expect("policy");
        assert_eq!(mode, Mode::Enforce);
        assert_eq!(
            mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert_eq!(max_age, 604800);
        assert_eq!(
            txt_id("v=STSv1; id=20160831085700Z;"),
            Some("20160831085700Z".into())
        );
        // Not a policy: another version, no mode, an enforce without mx,
        // an unknown mode.
        assert_eq!(
            parse_policy("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1"),
            Err(PolicyError::Version)
        );
        assert_eq!(
            parse_policy("version: STSv1\nmx: a\nmax_age: 1"),
            Err(PolicyError::Mode)
        );
        assert_eq!(
            parse_policy("version: STSv1\nmode: enforce\nmax_age: 1"),
            Err(PolicyError::NoMx)
        );
        assert_eq!(
            parse_policy("version: STSv1\nmode: strict\nmx: a\nmax_age: 1"),
            Err(PolicyError::Mode)
        );
        // max_age is capped at a year.
        assert_eq!(
            parse_policy("version: STSv1\nmode: none\nmax_age: 99999999").map(|p| p.2),
            Ok(MAX_AGE_LIMIT)
        );
        for bad in [
            "v=STSv2; id=1",
            "id=1",
            "v=STSv1;",
            "v=STSv1; id=a-b",
            "v=STSv1; id=",
        ] {
            assert_eq!(txt_id(bad), None, "{bad}");
        }
    }

    /// RFC 8461 4.1: `*.example.com` matches one label more, never the
    /// domain itself nor two labels more.
    #[test]
    fn mx_patterns_match_as_the_rfc_says() {
        assert!(mx_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_matches(
            "mail.example.com",
            "mail.example.com.evil.test"
        ));
        assert!(!mx_matches("*.example.com", ".example.com"));
    }
}
