//! TLS reporting (RFC 8460): every connection to an MX host counted in the
//! store, for every node, by the receiving domain, the UTC day, the policy
//! that applied and how TLS went; and the day's aggregate report for one
//! domain in the RFC's JSON. Counted off the delivery path: a count lost to
//! a store error loses a line of a report, never a message.

use super::mta_sts::{Mode, Policy};
use crate::store::{Store, Write};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a day's counts are kept: reports go out the day after.
const KEEP: Duration = Duration::from_secs(8 * 86_400);

/// One connection's TLS outcome, as a report counts it.
pub struct Session<'a> {
    pub domain: &'a str,
    /// The MTA-STS policy that applied, if any.
    pub policy: Option<&'a Policy>,
    /// DANE applied (the MX host's TLSA records).
    pub dane: bool,
    /// The domain publishes an MTA-STS policy that could not be had.
    pub sts_failed: bool,
    pub mx: &'a str,
    /// `success`, or an RFC 8460 result type.
    pub result: &'a str,
}

/// The UTC day of `ms`, `YYYY-MM-DD`.
pub fn day_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_default()
}

fn policy_type(policy: Option<&Policy>, dane: bool, sts_failed: bool) -> &'static str {
    if dane {
        "tlsa"
    } else if policy.is_some() || sts_failed {
        "sts"
    } else {
        "no-policy-found"
    }
}

/// Counts `s` (in the background: the caller does not wait for the store).
pub fn count(store: &Store, s: &Session<'_>) {
    let domain = s.domain.trim_end_matches('.').to_ascii_lowercase();
    let day = day_of(store.now_ms());
    let member = format!(
        "{}|{}|{}",
        policy_type(s.policy, s.dane, s.sts_failed),
        s.result,
        s.mx.trim_end_matches('.').to_ascii_lowercase()
    );
    let counter = format!("tlsrpt:{day}:{domain}:{member}");
    let writes = vec![
        Write::SetAdd {
            set: format!("tlsrpt:{day}"),
            member: domain.clone(),
            ttl: Some(KEEP),
        },
        Write::SetAdd {
            set: format!("tlsrpt:{day}:{domain}"),
            member,
            ttl: Some(KEEP),
        },
    ];
    let store = store.clone();
    tokio::spawn(async move {
        let counted = store.incr(&counter, 1, KEEP).await;
        let filed = store.write(&writes).await;
        if let Err(e) = counted.and(filed) {
            tracing::warn!(%domain, error = %e, "a TLS session could not be counted for its report");
        }
    });
}

/// `domain`'s report for `day` in RFC 8460's JSON (section 4.4): its
/// sessions by policy, the successes and the failures by result type and
/// MX host. `policy`: the domain's MTA-STS policy, for its text. None when
/// nothing was counted.
pub async fn report(
    store: &Store,
    domain: &str,
    day: &str,
    reporter: &str,
    policy: Option<&Policy>,
) -> Result<Option<Value>, crate::store::StoreError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let by_type = tally(store, day, &domain).await?;
    if by_type.is_empty() {
        return Ok(None);
    }
    let policies: Vec<Value> = by_type
        .into_iter()
        .map(|(kind, (ok, failed, details, mx_hosts))| {
            let mut p = json!({
                "policy-type": kind,
                "policy-domain": domain,
                "mx-host": mx_hosts,
            });
            if let Some(policy) = policy.filter(|_| kind == "sts") {
                p["policy-string"] = json!(policy_lines(policy));
            }
            json!({
                "policy": p,
                "summary": {
                    "total-successful-session-count": ok,
                    "total-failure-session-count": failed,
                },
                "failure-details": details
                    .into_iter()
                    .map(|((result, mx), n)| json!({
                        "result-type": result,
                        "receiving-mx-hostname": mx,
                        "failed-session-count": n,
                    }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Some(json!({
        "organization-name": reporter,
        "date-range": {
            "start-datetime": format!("{day}T00:00:00Z"),
            "end-datetime": format!("{day}T23:59:59Z"),
        },
        "contact-info": format!("postmaster@{reporter}"),
        "report-id": format!("{day}_{domain}@{reporter}"),
        "policies": policies,
    })))
}

/// policy type → (successes, failures, (result, mx) → count, MX hosts)
type Tally = (u64, u64, BTreeMap<(String, String), u64>, Vec<String>);

/// `domain`'s sessions on `day`, by policy type.
async fn tally(
    store: &Store,
    day: &str,
    domain: &str,
) -> Result<BTreeMap<String, Tally>, crate::store::StoreError> {
    let members = store.set_members(&format!("tlsrpt:{day}:{domain}")).await?;
    let mut by_type: BTreeMap<String, Tally> = BTreeMap::new();
    for m in members {
        let mut parts = m.splitn(3, '|');
        let (Some(kind), Some(result), Some(mx)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let n: u64 = store
            .get(&format!("tlsrpt:{day}:{domain}:{m}"))
            .await?
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
            .unwrap_or(0);
        let t = by_type.entry(kind.to_string()).or_default();
        if !t.3.iter().any(|h| h == mx) {
            t.3.push(mx.to_string());
        }
        if result == "success" {
            t.0 += n;
        } else {
            t.1 += n;
            *t.2.entry((result.to_string(), mx.to_string())).or_default() += n;
        }
    }
    Ok(by_type)
}

/// A receiving domain's TLS sessions over some days.
#[derive(Debug, Clone, Default)]
pub struct DomainWeek {
    pub domain: String,
    pub sessions: u64,
    pub failed: u64,
    /// Failed sessions by RFC 8460 result type.
    pub failures: BTreeMap<String, u64>,
}

/// The receiving domains whose TLS failed in the `days` UTC days up to
/// `now_ms`, most failures first (`limit` at most), for the console.
pub async fn failures_over(
    store: &Store,
    now_ms: i64,
    days: i64,
    limit: usize,
) -> Result<Vec<DomainWeek>, crate::store::StoreError> {
    let mut by_domain: BTreeMap<String, DomainWeek> = BTreeMap::new();
    for back in 0..days {
        let day = day_of(now_ms - back * 86_400_000);
        for domain in store.set_members(&format!("tlsrpt:{day}")).await? {
            let w = by_domain.entry(domain.clone()).or_default();
            w.domain = domain.clone();
            for (ok, failed, details, _) in tally(store, &day, &domain).await?.into_values() {
                w.sessions += ok + failed;
                w.failed += failed;
                for ((result, _), n) in details {
                    *w.failures.entry(result).or_default() += n;
                }
            }
        }
    }
    let mut out: Vec<DomainWeek> = by_domain.into_values().filter(|w| w.failed > 0).collect();
    out.sort_by(|a, b| b.failed.cmp(&a.failed).then(a.domain.cmp(&b.domain)));
    out.truncate(limit);
    Ok(out)
}

/// The policy as its file said it, a line each (the report's
/// `policy-string`).
fn policy_lines(p: &Policy) -> Vec<String> {
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", p.mode.as_str()),
    ];
    lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
    lines.push(format!("max_age: {}", p.max_age_s));
    if p.mode == Mode::None {
        lines.retain(|l| !l.starts_with("mx:"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc() {
        // 2026-12-06T23:30:00Z, and half an hour later.
        assert_eq!(day_of(1_796_599_800_000), "2026-12-06");
        assert_eq!(day_of(1_796_601_600_000), "2026-12-07");
    }
}
