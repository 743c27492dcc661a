//! Password guessing over SMTP AUTH, slowed and then stopped: every failure
//! is counted per client address (an IPv6 client per /64) and per user
//! name in the store, so a cluster's nodes count together. A failure's
//! reply waits longer the more the address has failed; past
//! `smtp.auth_max_failures_per_ip` or `_per_user` within
//! `smtp.auth_failure_window`, AUTH from that address or as that user is
//! refused (`454 4.7.0`), the right password too, until the window ends or
//! an operator lifts it (`kiln auth unblock`). Clients in the listener's
//! relay networks are not counted per address (many applications may share
//! one address behind NAT), only per user.

use crate::config::SmtpSettings;
use crate::store::{BatchOp, BatchValue, Store, StoreError};
use std::net::IpAddr;
use std::time::Duration;

/// Where the store lists what is blocked now, for the operator.
const BLOCKED: &str = "auth-blocked";
/// A failure's reply waits this long per failure of its address so far, up
/// to [`MAX_DELAY`].
const DELAY_STEP: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// What is counted: `ip:<address or /64>` or `user:<name>`.
fn subjects(ip: Option<IpAddr>, user: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(2);
    if let Some(ip) = ip {
        out.push(format!("ip:{}", crate::net::client_net(ip)));
    }
    out.push(format!("user:{}", user.to_ascii_lowercase()));
    out
}

fn counter(subject: &str) -> String {
    format!("auth-failures:{subject}")
}

fn limit(settings: &SmtpSettings, subject: &str) -> u64 {
    if subject.starts_with("ip:") {
        settings.auth_max_failures_per_ip
    } else {
        settings.auth_max_failures_per_user
    }
}

/// The subject AUTH is refused for now, if any. `ip` is None for a client
/// that is not counted per address.
pub async fn blocked(
    store: &Store,
    settings: &SmtpSettings,
    ip: Option<IpAddr>,
    user: &str,
) -> Result<Option<String>, StoreError> {
    let subjects = subjects(ip, user);
    let ops: Vec<BatchOp> = subjects.iter().map(|s| BatchOp::Get(counter(s))).collect();
    let values = store.batch(&ops).await?;
    Ok(subjects
        .into_iter()
        .zip(values)
        .find_map(|(subject, value)| {
            let count = match value {
                BatchValue::Bytes(Some(b)) => {
                    String::from_utf8_lossy(&b).parse::<u64>().unwrap_or(0)
                }
                _ => 0,
            };
            (count >= limit(settings, &subject)).then_some(subject)
        }))
}

/// Counts a failure; answers how long its reply should wait.
pub async fn failed(
    store: &Store,
    settings: &SmtpSettings,
    ip: Option<IpAddr>,
    user: &str,
) -> Result<Duration, StoreError> {
    let window = settings.auth_failure_window;
    let mut delay = Duration::ZERO;
    for subject in subjects(ip, user) {
        let count = store.incr(&counter(&subject), 1, window).await?.max(0) as u64;
        if subject.starts_with("ip:") {
            delay = (DELAY_STEP * count.min(u32::MAX as u64) as u32).min(MAX_DELAY);
        }
        if count == limit(settings, &subject) {
            tracing::warn!(%subject, failures = count, window_secs = window.as_secs(), "sign-in blocked after repeated failures (SMTP AUTH and the console count together)");
            store.set_add(BLOCKED, &subject, Some(window)).await?;
        }
    }
    Ok(delay)
}

/// What is blocked now (`ip:...`, `user:...`).
pub async fn list(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut all = store.set_members(BLOCKED).await?;
    all.sort();
    Ok(all)
}

/// Lifts a block and forgets the subject's failures; false when it was not
/// blocked.
pub async fn unblock(store: &Store, subject: &str) -> Result<bool, StoreError> {
    store
        .batch(&[BatchOp::Give {
            key: counter(subject),
            amount: i64::MAX,
        }])
        .await?;
    store.set_remove(BLOCKED, subject).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_address_and_the_user() {
        assert_eq!(
            subjects(Some("192.0.2.7".parse().unwrap()), "Bob"),
            ["ip:192.0.2.7", "user:bob"]
        );
        assert_eq!(subjects(None, "bob"), ["user:bob"]);
    }
}
