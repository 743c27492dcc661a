//! What a queued message is: the message as admission hands it to the
//! queue, one recipient's queue entry, its attempts and its status record,
//! and what the queue decides to do with an entry after an attempt. The
//! queue (`queue/`) decides; the store (`store/`) keeps these as they are,
//! and both stand on this file, so neither has to open the other to learn
//! what a message in the queue is.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A message accepted for delivery: the body is stored once, each recipient
/// becomes its own queue entry.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub account: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// Recipients the policy dropped (by index), with the reason code: they
    /// get a final status and no queue entry.
    pub dropped: std::collections::BTreeMap<usize, String>,
    pub body: Arc<[u8]>,
    pub received_at_ms: i64,
    /// When the first attempt may start (later than receipt when the policy
    /// deferred the message, e.g. to the next day).
    pub ready_at_ms: i64,
    pub require_tls: bool,
    /// Source address chosen by `select_egress`, if any.
    pub source_ip: Option<std::net::IpAddr>,
    /// The egress pool chosen by `select_egress` ("": the default pool).
    pub pool: String,
    /// What the message was sent with, for its events ("" when none).
    pub template_id: String,
    pub task_id: String,
    /// How it came in, what the policy said: kept with its status.
    pub story: Vec<IntakeStep>,
}

/// One recipient's pending delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueEntry {
    pub msg_id: String,
    pub rcpt_idx: u32,
    pub recipient: String,
    pub sender: String,
    pub attempts: u32,
    pub received_at_ms: i64,
    pub ready_at_ms: i64,
    #[serde(default)]
    pub require_tls: bool,
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    /// The egress pool ("": the default pool).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// The sending account ("" for a relay client), template and batch
    /// task, for events.
    #[serde(default)]
    pub account: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task_id: String,
}

impl QueueEntry {
    pub fn key(&self) -> String {
        entry_key(&self.msg_id, self.rcpt_idx)
    }

    pub fn domain(&self) -> &str {
        self.recipient
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("")
    }
}

pub fn entry_key(msg_id: &str, idx: u32) -> String {
    format!("{msg_id}/{idx}")
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    Queued,
    Deferred,
    Delivered,
    Bounced,
    Expired,
    /// Refused by the policy before queuing (blocklist, unsubscribe, ...).
    Dropped,
}

impl RecipientState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RecipientState::Delivered
                | RecipientState::Bounced
                | RecipientState::Expired
                | RecipientState::Dropped
        )
    }
}

/// One delivery attempt, as reported by `kiln status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub at_ms: i64,
    pub mx: Option<String>,
    pub ip: Option<String>,
    pub code: Option<u16>,
    pub enhanced_code: Option<String>,
    pub message: String,
    pub tls: Option<String>,
    pub duration_ms: u64,
    /// The source address's name (egress), when the plan has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The throttling rule the reply matched, and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaping: Option<String>,
    /// How the reply was classified and what followed (next try at,
    /// bounced, blocklisted), for `kiln explain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The node that made it (`server.node_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The receiving domain's TLS policy that applied
    /// (`MTA-STS enforce id=...`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_policy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientStatus {
    pub recipient: String,
    pub state: RecipientState,
    pub updated_at_ms: i64,
    pub next_attempt_at_ms: Option<i64>,
    pub attempts: Vec<Attempt>,
    /// Why the recipient was dropped (an API error code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageMeta {
    pub id: String,
    pub account: String,
    pub sender: String,
    pub size: usize,
    pub received_at_ms: i64,
    /// How the message came in and what was decided for it on the way to
    /// the queue, for `kiln explain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub story: Vec<IntakeStep>,
}

/// One thing that happened to a message before it was queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IntakeStep {
    /// received, content_filter, check_limits, select_egress, dkim ...
    pub what: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageStatus {
    #[serde(flatten)]
    pub meta: MessageMeta,
    pub recipients: Vec<RecipientStatus>,
}

impl NewMessage {
    pub(crate) fn meta(&self) -> MessageMeta {
        MessageMeta {
            id: self.id.clone(),
            account: self.account.clone(),
            sender: self.sender.clone(),
            size: self.body.len(),
            received_at_ms: self.received_at_ms,
            story: self.story.clone(),
        }
    }

    /// Recipients that are queued.
    pub fn queued_count(&self) -> usize {
        self.recipients.len() - self.dropped.len()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = QueueEntry> + '_ {
        (0..self.recipients.len())
            .filter(|i| !self.dropped.contains_key(i))
            .filter_map(|i| self.entry_for(i))
    }

    /// The queue entry of recipient `i` (for a dropped one: as it would
    /// have been queued).
    pub fn entry_for(&self, i: usize) -> Option<QueueEntry> {
        Some(QueueEntry {
            msg_id: self.id.clone(),
            rcpt_idx: i as u32,
            recipient: self.recipients.get(i)?.clone(),
            sender: self.sender.clone(),
            attempts: 0,
            received_at_ms: self.received_at_ms,
            ready_at_ms: self.ready_at_ms,
            require_tls: self.require_tls,
            source_ip: self.source_ip,
            pool: self.pool.clone(),
            account: self.account.clone(),
            template_id: self.template_id.clone(),
            task_id: self.task_id.clone(),
        })
    }

    pub(crate) fn initial_status(&self, recipient: &str) -> RecipientStatus {
        RecipientStatus {
            recipient: recipient.to_string(),
            state: RecipientState::Queued,
            updated_at_ms: self.received_at_ms,
            next_attempt_at_ms: Some(self.ready_at_ms),
            attempts: Vec::new(),
            reason: None,
        }
    }

    /// Final statuses of the dropped recipients: (index, status).
    pub(crate) fn dropped_statuses(&self) -> impl Iterator<Item = (u32, RecipientStatus)> + '_ {
        self.dropped.iter().filter_map(|(i, reason)| {
            Some((
                *i as u32,
                RecipientStatus {
                    recipient: self.recipients.get(*i)?.clone(),
                    state: RecipientState::Dropped,
                    updated_at_ms: self.received_at_ms,
                    next_attempt_at_ms: None,
                    attempts: Vec::new(),
                    reason: Some(reason.clone()),
                },
            ))
        })
    }
}

/// What to do with a leased entry once an attempt is over.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Delivered, bounced or expired: the entry leaves the queue.
    Final(RecipientStatus),
    /// Try again at `entry.ready_at_ms` (already updated by the caller).
    Retry(Box<QueueEntry>, RecipientStatus),
}

/// A message from news@acme.test (account acme) to `recipients`, received
/// and due at `now`: for the store's and the queue's tests.
#[cfg(test)]
pub fn test_message(id: &str, recipients: &[&str], now: i64) -> NewMessage {
    NewMessage {
        id: id.into(),
        account: "acme".into(),
        sender: "news@acme.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        dropped: Default::default(),
        body: std::sync::Arc::from(&b"Subject: x\r\n\r\nhi\r\n"[..]),
        received_at_ms: now,
        ready_at_ms: now,
        require_tls: false,
        source_ip: None,
        pool: String::new(),
        template_id: String::new(),
        task_id: String::new(),
        story: Vec::new(),
    }
}
