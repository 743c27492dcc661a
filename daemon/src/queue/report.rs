//! What follows the end of a recipient's delivery, decided and recorded in
//! one place and one order, whoever saw it end:
//!
//! 1. a refusal (an MX's reply, a returned DSN) goes to `classify_bounce`;
//! 2. the queue decides what it means (delivered, bounced, deferred to the
//!    next try, expired);
//! 3. the recipient's status and whatever the outcome's listener must have
//!    durable with it (the event's callback job) are written in one commit;
//! 4. then the listener (feedback) hears of the [`Outcome`]: statistics,
//!    the reputation feed, the event log, the metrics.
//!
//! Egress reports its attempts and an operator's bounce through
//! [`QueueHandle::report`], `inbound_reports` a DSN that came back later,
//! and [`QueueHandle::submit`] the recipients the policy dropped at intake.
//! Nothing else changes a recipient's queue state.

use super::QueueHandle;
use super::control::Rule;
use super::outcome::{Decision, Verdict};
use crate::policy::decisions::{BounceClass, BounceInfo, Signal};
use crate::policy::hooks;
use crate::queued::{Attempt, MessageStatus, NewMessage, QueueEntry, RecipientState};
use crate::store::{StoreError, Write};
use futures::future::BoxFuture;

/// How a recipient's delivery ended, as the room that saw it tells it.
// Made once per attempt and moved into `report`: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Report {
    /// An attempt egress made to `provider` (None: it could not be made,
    /// the domain has no MX), ending in `verdict`; `signal` is the
    /// throttling rule its reply matched, if any.
    Attempt {
        verdict: Verdict,
        attempt: Attempt,
        signal: Option<Signal>,
        provider: Option<String>,
    },
    /// An operator's rule bounces the entry: no attempt is made.
    Operator(Rule),
}

/// A delivery status notification that came back after the receiver took
/// the message.
pub struct Returned {
    pub msg_id: String,
    pub rcpt_idx: u32,
    /// The reply code it gives (5xx when it gives none).
    pub code: u16,
    /// Its `Status:` field (5.1.1).
    pub status: String,
    /// Its diagnostic text, without code and status.
    pub detail: String,
    /// The reply as the report gives it (code, status, text).
    pub reply: String,
    pub remote_mta: String,
}

/// What became of a returned DSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnedAs {
    /// The recipient is bounced now.
    Bounce,
    /// It was bounced already (a repeated report, or one after a refusal).
    AlreadyBounced,
    /// It is still queued: its next attempt decides.
    StillQueued,
    UnknownRecipient,
}

/// Who or what ended the delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// An attempt to `provider` (None: no MX to try).
    Attempt { provider: Option<String> },
    /// A delivery status notification, after the receiver took the message.
    Returned,
    /// An operator's bounce rule (`select`, `by`).
    Operator { select: String, by: String },
    /// The policy dropped the recipient before queuing.
    Dropped,
}

/// One recipient's outcome as the queue decided and recorded it: what its
/// listener hears.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// Unique per outcome (its event's id: receivers use it to drop a
    /// repeat).
    pub id: String,
    /// The recipient's entry (for a returned DSN or a drop, as it was
    /// queued).
    pub entry: &'a QueueEntry,
    pub state: RecipientState,
    /// When the next attempt is due (deferred only).
    pub next_attempt_at_ms: Option<i64>,
    /// What `classify_bounce` said of the refusal, if it was asked.
    pub class: Option<BounceClass>,
    /// The attempt as recorded (None for a drop).
    pub attempt: Option<Attempt>,
    pub cause: Cause,
    /// What happened, for the event: the reply, the rule's reason, the
    /// drop's reason code.
    pub reason: String,
    pub at_ms: i64,
}

impl Outcome<'_> {
    /// A bounce's type: soft for a class other than `hard` and for a
    /// recipient the queue gave up on.
    pub fn bounce_type(&self) -> Option<&'static str> {
        match self.state {
            RecipientState::Bounced if self.class.as_ref().is_some_and(|c| c.class != "hard") => {
                Some("soft")
            }
            RecipientState::Bounced => Some("hard"),
            RecipientState::Expired => Some("soft"),
            _ => None,
        }
    }

    /// Whether it says something of its sender's mail (the reputation
    /// rules and the statistics count it): an attempt's or a DSN's, not an
    /// operator's bounce or a drop.
    pub fn is_the_senders(&self) -> bool {
        matches!(self.cause, Cause::Attempt { .. } | Cause::Returned)
    }
}

/// Who hears of every outcome: feedback, which the queue does not import.
pub trait Listener: Send + Sync {
    /// What must be durable exactly when the outcome is (its event's
    /// callback job): written in the same commit. None when there is
    /// nothing (no callback to file), without a future to wait on.
    fn writes_for<'a>(&'a self, outcome: &'a Outcome<'_>) -> Option<BoxFuture<'a, Vec<Write>>>;
    /// The outcome is recorded: statistics, reputation, log, metrics.
    fn recorded(&self, outcome: &Outcome<'_>);
}

impl QueueHandle {
    /// The end of an attempt on a leased `entry` (or an operator's bounce
    /// of it), decided, recorded and announced. If the store cannot
    /// record it, the entry is handed back to be tried again (at worst
    /// delivered twice, never lost).
    pub async fn report(&self, entry: &QueueEntry, report: Report) {
        let now = self.store.now_ms();
        let (verdict, mut attempt, class, cause) = match report {
            Report::Attempt {
                verdict,
                mut attempt,
                signal,
                provider,
            } => {
                let (mut verdict, class) = self.classify(entry, verdict, &mut attempt).await;
                if let Some(s) = &signal {
                    // A throttling signal that says "retry" makes a refusal
                    // temporary, whatever its code.
                    if s.retry && verdict == Verdict::Permanent {
                        verdict = Verdict::Temporary;
                    }
                    if s.bounce && verdict == Verdict::Temporary {
                        verdict = Verdict::Permanent;
                    }
                    attempt.shaping = Some(describe(s));
                }
                (verdict, attempt, class, Cause::Attempt { provider })
            }
            Report::Operator(rule) => {
                let super::control::Action::Bounce { reason } = &rule.action else {
                    return;
                };
                let attempt = Attempt {
                    at_ms: now,
                    mx: None,
                    ip: None,
                    code: None,
                    enhanced_code: Some("5.0.0".into()),
                    message: format!("bounced by the operator ({}): {reason}", rule.by),
                    tls: None,
                    duration_ms: 0,
                    source: None,
                    shaping: None,
                    outcome: Some("bounced by the operator".into()),
                    node: None,
                    tls_policy: None,
                };
                let cause = Cause::Operator {
                    select: rule.select.to_string(),
                    by: rule.by.clone(),
                };
                (Verdict::Permanent, attempt, None, cause)
            }
        };
        let decision = self.schedule.decide(entry, verdict, now);
        attempt.node = Some(self.node_id.clone());
        if attempt.outcome.is_none() {
            attempt.outcome = Some(outcome_text(
                decision.state,
                class.as_ref(),
                decision.next_attempt_at_ms,
            ));
        }
        if let Cause::Attempt { .. } = &cause {
            log_attempt(entry, &attempt, decision.state, class.as_ref());
        }
        let reason = reason_of(decision.state, &attempt);
        let mut outcome = Outcome {
            id: new_id(),
            entry,
            state: decision.state,
            next_attempt_at_ms: decision.next_attempt_at_ms,
            class,
            attempt: None,
            cause,
            reason,
            at_ms: now,
        };
        let also = self.writes_for(&outcome).await;
        if self
            .settle(entry, decision, attempt.clone(), &also)
            .await
            .is_ok()
        {
            outcome.attempt = Some(attempt);
            if let Cause::Operator { select, by } = &outcome.cause {
                tracing::info!(
                    msg_id = %entry.msg_id,
                    recipient = %entry.recipient,
                    rule = %select,
                    by = %by,
                    reason = %outcome.reason,
                    "bounced by the operator"
                );
            }
            self.listener.recorded(&outcome);
        }
    }

    /// A DSN that came back for a recipient that left the queue (`status`:
    /// its message's record, as the caller just read it): the recipient
    /// bounces after all, with the event in the same commit. A repeated
    /// report, or one for a recipient still queued, changes nothing.
    pub async fn report_returned(
        &self,
        status: &MessageStatus,
        r: Returned,
    ) -> Result<ReturnedAs, StoreError> {
        let Some(rcpt) = status.recipients.get(r.rcpt_idx as usize) else {
            return Ok(ReturnedAs::UnknownRecipient);
        };
        match rcpt.state {
            RecipientState::Bounced => return Ok(ReturnedAs::AlreadyBounced),
            s if !s.is_final() => return Ok(ReturnedAs::StillQueued),
            _ => {}
        }
        let meta = &status.meta;
        let entry = QueueEntry {
            msg_id: r.msg_id.clone(),
            rcpt_idx: r.rcpt_idx,
            recipient: rcpt.recipient.clone(),
            sender: meta.sender.clone(),
            attempts: rcpt.attempts.len() as u32,
            received_at_ms: meta.received_at_ms,
            ready_at_ms: 0,
            require_tls: false,
            source_ip: None,
            pool: String::new(),
            account: meta.account.clone(),
            template_id: String::new(),
            task_id: String::new(),
        };
        let info = BounceInfo {
            code: r.code,
            enhanced_code: r.status.clone(),
            text: r.reply.clone(),
            recipient: entry.recipient.clone(),
            sender_domain: crate::net::domain_of(&entry.sender).to_ascii_lowercase(),
            mx: String::new(),
            source: "dsn",
        };
        let class = self
            .policy
            .call(hooks::ClassifyBounce, &info)
            .await
            .ok()
            .flatten();
        let now = self.store.now_ms();
        let attempt = Attempt {
            at_ms: now,
            mx: Some(r.remote_mta).filter(|m| !m.is_empty()),
            ip: None,
            code: Some(r.code),
            enhanced_code: Some(r.status.clone()).filter(|s| !s.is_empty()),
            message: format!("{} (returned in a delivery status notification)", r.detail),
            tls: None,
            duration_ms: 0,
            source: None,
            shaping: None,
            outcome: None,
            node: Some(self.node_id.clone()),
            tls_policy: None,
        };
        let mut updated = rcpt.clone();
        updated.state = RecipientState::Bounced;
        updated.updated_at_ms = now;
        updated.next_attempt_at_ms = None;
        updated.attempts.push(attempt.clone());
        let outcome = Outcome {
            id: new_id(),
            entry: &entry,
            state: RecipientState::Bounced,
            next_attempt_at_ms: None,
            class,
            attempt: Some(attempt),
            cause: Cause::Returned,
            reason: format!("{} {}", r.status, r.reply).trim().to_string(),
            at_ms: now,
        };
        let also = self.writes_for(&outcome).await;
        self.store
            .record_status(&r.msg_id, r.rcpt_idx, &updated, &also)
            .await?;
        self.listener.recorded(&outcome);
        Ok(ReturnedAs::Bounce)
    }

    /// The outcomes of the recipients `msg` dropped at intake (`entries`:
    /// theirs, from [`dropped_entries`]), for `submit` to write with the
    /// message.
    pub(super) fn dropped_outcomes<'a>(
        &self,
        msg: &NewMessage,
        entries: &'a [QueueEntry],
    ) -> Vec<Outcome<'a>> {
        entries
            .iter()
            .filter_map(|entry| {
                let reason = msg.dropped.get(&(entry.rcpt_idx as usize))?;
                Some(Outcome {
                    id: new_id(),
                    entry,
                    state: RecipientState::Dropped,
                    next_attempt_at_ms: None,
                    class: None,
                    attempt: None,
                    cause: Cause::Dropped,
                    reason: reason.clone(),
                    at_ms: msg.received_at_ms,
                })
            })
            .collect()
    }

    /// What the listener must have written with `outcome`.
    pub(super) async fn writes_for(&self, outcome: &Outcome<'_>) -> Vec<Write> {
        match self.listener.writes_for(outcome) {
            Some(writes) => writes.await,
            None => Vec::new(),
        }
    }

    /// Asks `classify_bounce` about a refusal the MX replied with; its
    /// answer may turn a retry into a bounce or the other way round. If the
    /// hook fails, the recipient is retried later: a script error never
    /// bounces mail.
    async fn classify(
        &self,
        entry: &QueueEntry,
        verdict: Verdict,
        attempt: &mut Attempt,
    ) -> (Verdict, Option<BounceClass>) {
        // Only replies are classified; DNS and connection failures are ours.
        if verdict == Verdict::Delivered || attempt.code.is_none() {
            return (verdict, None);
        }
        let info = BounceInfo {
            code: attempt.code.unwrap_or(0),
            enhanced_code: attempt.enhanced_code.clone().unwrap_or_default(),
            text: attempt.message.clone(),
            recipient: entry.recipient.clone(),
            sender_domain: crate::net::domain_of(&entry.sender),
            mx: attempt.mx.clone().unwrap_or_default(),
            source: "smtp",
        };
        match self.policy.call(hooks::ClassifyBounce, &info).await {
            Ok(Some(class)) => {
                let verdict = match class.retry {
                    Some(true) => Verdict::Temporary,
                    Some(false) => Verdict::Permanent,
                    None => verdict,
                };
                (verdict, Some(class))
            }
            Ok(None) => (verdict, None),
            Err(e) => {
                attempt.message =
                    format!("{} (bounce classification failed: {e})", attempt.message);
                (Verdict::Temporary, None)
            }
        }
    }

    /// The decision for `entry` had its attempt ended with `verdict` now
    /// (what `report` would decide, for tests and tools).
    pub fn decide(&self, entry: &QueueEntry, verdict: Verdict) -> Decision {
        self.schedule.decide(entry, verdict, self.store.now_ms())
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The entries of the recipients `msg` dropped at intake, as they would
/// have been queued.
pub(super) fn dropped_entries(msg: &NewMessage) -> Vec<QueueEntry> {
    msg.dropped
        .keys()
        .filter_map(|i| msg.entry_for(*i))
        .collect()
}

/// The log line of an attempt.
fn log_attempt(
    entry: &QueueEntry,
    attempt: &Attempt,
    state: RecipientState,
    class: Option<&BounceClass>,
) {
    tracing::info!(
        msg_id = %entry.msg_id,
        recipient = %entry.recipient,
        mx = attempt.mx.as_deref().unwrap_or("-"),
        ip = attempt.ip.as_deref().unwrap_or("-"),
        source = attempt.source.as_deref().unwrap_or("-"),
        code = attempt.code.unwrap_or(0),
        enhanced_code = attempt.enhanced_code.as_deref().unwrap_or("-"),
        tls = attempt.tls.as_deref().unwrap_or("none"),
        attempt = entry.attempts + 1,
        elapsed_ms = attempt.duration_ms,
        outcome = ?state,
        reply = %attempt.message,
        "delivery attempt"
    );
    if let Some(c) = class {
        tracing::debug!(msg_id = %entry.msg_id, class = %c.class, "bounce classified");
    }
}

/// What an attempt's event says happened: the reply, the throttling rule
/// it matched, and that the queue gave up.
fn reason_of(state: RecipientState, attempt: &Attempt) -> String {
    let mut reason = match (attempt.code, &attempt.enhanced_code) {
        (Some(c), Some(x)) => format!("{c} {x} {}", attempt.message),
        (Some(c), None) => format!("{c} {}", attempt.message),
        _ => attempt.message.clone(),
    };
    if let Some(shaping) = &attempt.shaping {
        reason = format!("{reason} (shaping: {shaping})");
    }
    if state == RecipientState::Expired {
        reason = format!("gave up after the queue's maximum age: {reason}");
    }
    reason
}

/// What followed an attempt, as `kiln explain` tells it.
fn outcome_text(state: RecipientState, class: Option<&BounceClass>, next: Option<i64>) -> String {
    let mut out = match (state, next) {
        (RecipientState::Deferred, Some(at)) => {
            format!("deferred, next try at {}", crate::clock::format_ms(at))
        }
        (RecipientState::Expired, _) => "expired: the queue gave up".to_string(),
        (RecipientState::Delivered, _) => "delivered".to_string(),
        (RecipientState::Bounced, _) => "bounced".to_string(),
        (s, _) => format!("{s:?}").to_lowercase(),
    };
    if let Some(c) = class {
        out.push_str(&format!(" (classified {}", c.class));
        if c.blocklist {
            out.push_str(", address blocklisted");
        }
        out.push(')');
    }
    out
}

/// A signal as the attempt record shows it.
fn describe(s: &Signal) -> String {
    let mut parts = vec![format!("rule {}", s.rule)];
    if let Some(secs) = s.suspend_s {
        parts.push(format!("suspended {secs}s"));
    }
    if let Some(f) = s.factor {
        parts.push(format!("pace x{f}"));
    }
    if s.other_source {
        parts.push("other sources meanwhile".into());
    }
    if s.retry {
        parts.push("retried".into());
    }
    if s.bounce {
        parts.push("bounced".into());
    }
    parts.join(", ")
}
