//! An event: what happened to a message for one recipient, as the log
//! line, the callback and the message's trail tell it. The kinds and the
//! fields are the callbacks' wire format: they do not change.

use serde::{Deserialize, Serialize};

/// What kind of thing happened; the names are the callbacks' and the log's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    #[default]
    Delivered,
    Deferred,
    Dropped,
    Bounce,
    Open,
    Click,
    SpamReport,
    Unsubscribe,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Dropped => "dropped",
            EventKind::Bounce => "bounce",
            EventKind::Open => "open",
            EventKind::Click => "click",
            EventKind::SpamReport => "spamreport",
            EventKind::Unsubscribe => "unsubscribe",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub event: EventKind,
    /// Unique per event: receivers use it to drop a repeat.
    pub event_id: String,
    pub message_id: String,
    pub recipient: String,
    /// Envelope sender (the sender address).
    pub from: String,
    pub from_domain: String,
    pub account: String,
    #[serde(default)]
    pub template_id: String,
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub link: String,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub ip: String,
    /// The remote reply or the drop reason.
    #[serde(default)]
    pub reason: String,
    /// bounce: "hard" or "soft".
    #[serde(default)]
    pub bounce_type: String,
    /// When it happened (ms).
    pub at: i64,
    /// When the message was accepted (ms).
    pub sent_at: i64,
}

impl Event {
    /// An event of `kind` that happened at `at` (ms since the epoch).
    pub fn new(
        at: i64,
        kind: EventKind,
        message_id: &str,
        recipient: &str,
        from: &str,
        account: &str,
    ) -> Event {
        Event {
            event: kind,
            event_id: uuid::Uuid::now_v7().simple().to_string(),
            message_id: message_id.to_string(),
            recipient: recipient.to_string(),
            from: from.to_string(),
            from_domain: crate::net::domain_of(from).to_ascii_lowercase(),
            account: account.to_string(),
            at,
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds are the callbacks' `event` values, as receivers written
    /// for Tencent SES read them: they must not change.
    #[test]
    fn event_kinds_keep_their_wire_names() {
        let kinds = [
            (EventKind::Delivered, "delivered"),
            (EventKind::Deferred, "deferred"),
            (EventKind::Dropped, "dropped"),
            (EventKind::Bounce, "bounce"),
            (EventKind::Open, "open"),
            (EventKind::Click, "click"),
            (EventKind::SpamReport, "spamreport"),
            (EventKind::Unsubscribe, "unsubscribe"),
        ];
        for (kind, name) in kinds {
            assert_eq!(kind.as_str(), name);
            assert_eq!(
                serde_json::to_value(kind).expect("serialize"),
                serde_json::json!(name)
            );
            let back: EventKind = serde_json::from_value(serde_json::json!(name)).expect("read");
            assert_eq!(back, kind);
        }
        let e = Event::new(
            1,
            EventKind::SpamReport,
            "m",
            "r@x.test",
            "s@y.test",
            "acme",
        );
        let v = serde_json::to_value(&e).expect("serialize");
        assert_eq!(v["event"], "spamreport");
        assert_eq!(v["from_domain"], "y.test");
    }
}
