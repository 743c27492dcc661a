//! Console sessions: who signed in (the operator, or one account), kept in
//! the store so that any node of a cluster knows them, named by a random
//! id in an HttpOnly, SameSite=Strict cookie (Secure when the request came
//! over TLS), with a token each form must carry back (CSRF).
//!
//! The store holds a session under a hash of its id (one who reads the
//! store learns no cookie), and with a fingerprint of the credentials it was
//! opened with (`grant`): a session whose account's keys were rotated, or
//! which was disabled, or whose operator token changed, is over at its next
//! request.

use crate::store::Store;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const COOKIE: &str = "kiln_console";
/// A session lasts this long from sign-in.
pub const TTL: Duration = Duration::from_secs(8 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Who {
    /// The operator, with a hash of the token shown at sign-in.
    Operator(String),
    Account(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub who: Who,
    pub csrf: String,
    pub at_ms: i64,
    /// A fingerprint of the credentials in force at sign-in.
    #[serde(default)]
    pub grant: String,
}

fn key(id: &str) -> String {
    format!("console:session:{}", crate::digest::fingerprint(&[id]))
}

fn random_hex() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new session for `who`: its id and the session.
pub async fn create(
    store: &Store,
    who: Who,
    grant: String,
) -> Result<(String, Session), crate::store::StoreError> {
    let id = random_hex();
    let session = Session {
        who,
        csrf: random_hex(),
        at_ms: store.now_ms(),
        grant,
    };
    let bytes = serde_json::to_vec(&session).unwrap_or_default();
    store.put(&key(&id), &bytes, Some(TTL)).await?;
    Ok((id, session))
}

/// The session the request's cookie names, if it is one.
pub async fn load(store: &Store, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie_value(headers)?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = store.get(&key(&id)).await.ok()??;
    let session = serde_json::from_slice(&bytes).ok()?;
    Some((id, session))
}

pub async fn end(store: &Store, id: &str) {
    if let Err(e) = store.delete(&key(id)).await {
        tracing::warn!(error = %e, "a console session could not be ended");
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Whether the client reached us over TLS (directly, or through a proxy
/// that says so).
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The Set-Cookie value for session `id` (empty id: one that clears it).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let max_age = if id.is_empty() { 0 } else { TTL.as_secs() };
    format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let c = set_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(set_cookie("", false).contains("Max-Age=0"));
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "other=1; kiln_console=deadbeef".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("deadbeef"));
    }
}
