//! A message's story after it was queued, for `kiln explain`: what
//! happened that is not an attempt (opens, clicks, unsubscribes,
//! complaints, delays a report told of) and how each callback went. Kept
//! per message in the store, readable on any node, as long as the
//! message's status record; bounded per message.

use crate::store::{Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Steps kept per message at most (a recipient who opens a message a
/// thousand times is told of by the first ones).
const MAX_STEPS: i64 = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: i64,
    /// open, click, unsubscribe, complaint, deferred, callback ...
    pub what: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    pub text: String,
}

fn key(msg_id: &str) -> String {
    format!("trail:{msg_id}")
}

/// The write that adds `step` to `msg_id`'s trail, unless the trail is
/// full (one counter step in the store).
pub async fn write(store: &Store, msg_id: &str, step: &Step, retention: Duration) -> Option<Write> {
    let n = store
        .incr(&format!("trail-n:{msg_id}"), 1, retention)
        .await
        .ok()?;
    (n <= MAX_STEPS).then(|| add(msg_id, step, retention))
}

/// The write that adds `step` to `msg_id`'s trail, for steps bounded by
/// others already counted (a callback's outcome: one per event).
pub fn add(msg_id: &str, step: &Step, retention: Duration) -> Write {
    Write::SetAdd {
        set: key(msg_id),
        member: serde_json::to_string(step).unwrap_or_default(),
        ttl: Some(retention),
    }
}

/// The trail of `msg_id`, oldest first.
pub async fn read(store: &Store, msg_id: &str) -> Result<Vec<Step>, StoreError> {
    let mut steps: Vec<Step> = store
        .set_members(&key(msg_id))
        .await?
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect();
    steps.sort_by(|a, b| (a.at_ms, &a.what).cmp(&(b.at_ms, &b.what)));
    Ok(steps)
}
