//! What egress makes of a reply: asks the policy whether it is a
//! throttling signal (`egress_signal`, acted on by shaping) and what it
//! says about the recipient (`classify_bounce`), then reports the attempt
//! to the queue, which decides what it means, and tells feedback (the
//! event, the statistics, the reputation feed).

use super::Delivery;
use super::shaping::Shape;
use crate::net::domain_of;
use crate::policy::decisions::{BounceClass, BounceInfo, Signal, SignalInfo};
use crate::queue::control::{Action, Rule};
use crate::queue::outcome::Verdict;
use crate::store::{Attempt, QueueEntry, RecipientState};

impl Delivery {
    /// Asks `egress_signal` about a refusal (`stage`: connect, mail, rcpt,
    /// data) and acts on a signal: the pair is suspended or slowed for
    /// every node. Answers the signal, if the reply was one.
    pub(super) async fn throttling_signal(
        &self,
        shape: &Shape,
        code: u16,
        enhanced: Option<&str>,
        text: &str,
        stage: &'static str,
    ) -> Option<Signal> {
        if code < 400 {
            return None;
        }
        let info = SignalInfo {
            code,
            enhanced_code: enhanced.unwrap_or_default().to_string(),
            text: text.to_string(),
            stage,
            provider: shape.provider.to_string(),
            source: shape.source.to_string(),
        };
        let signal = self
            .policy
            .call::<_, Signal>("egress_signal", &info)
            .await
            .ok()
            .flatten()?;
        let reply = match enhanced {
            Some(x) => format!("{code} {x} {text}"),
            None => format!("{code} {text}"),
        };
        self.shaper.signal(shape, &signal, &reply, stage).await;
        Some(signal)
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
            sender_domain: domain_of(&entry.sender),
            mx: attempt.mx.clone().unwrap_or_default(),
            source: "smtp",
        };
        match self
            .policy
            .call::<_, BounceClass>("classify_bounce", &info)
            .await
        {
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

    /// Tells the `reputation` hook (through the outcome feed) and the daily
    /// statistics about a final outcome.
    fn report_outcome(
        &self,
        entry: &QueueEntry,
        state: RecipientState,
        class: Option<&BounceClass>,
    ) {
        let domain = domain_of(&entry.sender);
        match state {
            RecipientState::Delivered => {
                self.outcomes.record(&domain, "delivered");
                self.stats.record(&domain, &entry.recipient, "delivered", 1);
            }
            RecipientState::Bounced | RecipientState::Expired => {
                self.outcomes.record(&domain, "bounce");
                self.stats.record(&domain, &entry.recipient, "bounce", 1);
                if class.is_some_and(|c| c.invalid_address) {
                    self.outcomes.record(&domain, "invalid");
                }
                if class.is_some_and(|c| c.class == "spam") {
                    self.outcomes.record(&domain, "spam");
                }
            }
            _ => {}
        }
    }

    /// The envelope sender for one attempt: account mail leaves with a
    /// VERP address, on its sender domain's own return-path domain when
    /// that domain publishes one, else on the bounce domain (null senders
    /// and relayed mail keep theirs).
    pub(super) async fn return_path(&self, entry: &QueueEntry) -> String {
        match &self.verp {
            Some(v) if !entry.account.is_empty() && !entry.sender.is_empty() => {
                let sender_domain = domain_of(&entry.sender);
                let own = self
                    .return_paths
                    .domain_for(&sender_domain, || {
                        crate::ses::identities::return_path_domain(
                            &self.queue.store,
                            &self.settings,
                            &sender_domain,
                        )
                    })
                    .await;
                v.address(&entry.msg_id, entry.rcpt_idx, own.as_deref())
            }
            _ => entry.sender.clone(),
        }
    }

    /// The event for an attempt's outcome (delivered, deferred, bounce).
    fn event_for(
        now: i64,
        entry: &QueueEntry,
        state: RecipientState,
        class: Option<&BounceClass>,
        attempt: &Attempt,
    ) -> Option<crate::feedback::events::Event> {
        let kind = match state {
            RecipientState::Delivered => "delivered",
            RecipientState::Deferred => "deferred",
            RecipientState::Bounced | RecipientState::Expired => "bounce",
            RecipientState::Queued | RecipientState::Dropped => return None,
        };
        let bounce_type = bounce_type(state, class).unwrap_or_default();
        let mut e = crate::feedback::events::Event::new(
            now,
            kind,
            &entry.msg_id,
            &entry.recipient,
            &entry.sender,
            &entry.account,
        );
        e.bounce_type = bounce_type.to_string();
        e.sent_at = entry.received_at_ms;
        e.template_id = entry.template_id.clone();
        e.task_id = entry.task_id.clone();
        e.reason = match (attempt.code, &attempt.enhanced_code) {
            (Some(c), Some(x)) => format!("{c} {x} {}", attempt.message),
            (Some(c), None) => format!("{c} {}", attempt.message),
            _ => attempt.message.clone(),
        };
        if let Some(shaping) = &attempt.shaping {
            // The rule a throttling reply matched, for whoever reads events.
            e.reason = format!("{} (shaping: {shaping})", e.reason);
        }
        if state == RecipientState::Expired {
            e.reason = format!("gave up after the queue's maximum age: {}", e.reason);
        }
        Some(e)
    }

    /// Records an attempt's outcome with its event's writes (the callback)
    /// in one commit; answers whether it was recorded.
    async fn record(
        &self,
        entry: &QueueEntry,
        decision: crate::queue::outcome::Decision,
        mut attempt: Attempt,
        event: Option<&crate::feedback::events::Event>,
    ) -> bool {
        attempt.node = Some(self.node_id.clone());
        let also = match event {
            Some(e) => self.events.writes_for(e).await,
            None => Vec::new(),
        };
        self.queue
            .settle(entry, decision, attempt, &also)
            .await
            .is_ok()
    }

    /// Bounces an entry as an operator's rule says (no attempt is made):
    /// final with the rule's reason, one bounce event (and its callback)
    /// written with it. Not the sender's doing: the reputation feed and
    /// the statistics do not hear of it.
    pub(super) async fn bounce_by_operator(&self, entry: &QueueEntry, rule: &Rule) {
        let Action::Bounce { reason } = &rule.action else {
            return;
        };
        let now = self.queue.store.now_ms();
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
        };
        let decision = self.queue.decide(entry, Verdict::Permanent);
        let event = Self::event_for(now, entry, decision.state, None, &attempt);
        if self.record(entry, decision, attempt, event.as_ref()).await {
            tracing::info!(
                msg_id = %entry.msg_id,
                recipient = %entry.recipient,
                rule = %rule.select,
                by = %rule.by,
                reason = %reason,
                "bounced by the operator"
            );
            if let Some(m) = crate::metrics::get() {
                m.bounces
                    .get_or_create(&crate::metrics::BounceClass {
                        bounce_type: "hard",
                        class: "operator".into(),
                    })
                    .inc();
            }
            if let Some(event) = &event {
                crate::feedback::events::Events::log(event);
            }
        }
    }

    /// Reports an attempt to the queue, which decides what it means; then
    /// its event, the statistics and the reputation feed hear of it. A
    /// throttling signal that says "retry" makes a refusal temporary,
    /// whatever its code.
    pub(super) async fn settle(
        &self,
        entry: &QueueEntry,
        verdict: Verdict,
        mut attempt: Attempt,
        signal: Option<&Signal>,
        provider: &str,
    ) {
        let (mut verdict, class) = self.classify(entry, verdict, &mut attempt).await;
        if let Some(s) = signal {
            if s.retry && verdict == Verdict::Permanent {
                verdict = Verdict::Temporary;
            }
            if s.bounce && verdict == Verdict::Temporary {
                verdict = Verdict::Permanent;
            }
            attempt.shaping = Some(describe(s));
        }
        let decision = self.queue.decide(entry, verdict);
        let state = decision.state;
        attempt.outcome = Some(outcome_text(
            state,
            class.as_ref(),
            decision.next_attempt_at_ms,
        ));
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
        if let Some(c) = &class {
            tracing::debug!(msg_id = %entry.msg_id, class = %c.class, "bounce classified");
        }
        let event = Self::event_for(
            self.queue.store.now_ms(),
            entry,
            state,
            class.as_ref(),
            &attempt,
        );
        self.report_outcome(entry, state, class.as_ref());
        let counted = AttemptCount::new(provider, entry.domain(), state, class.as_ref(), &attempt);
        // After the status is durable: the event reports what the store says.
        if self.record(entry, decision, attempt, event.as_ref()).await {
            counted.record();
            if let Some(event) = &event {
                crate::feedback::events::Events::log(event);
            }
        }
    }
}

/// A bounce's type, as events and the metrics give it: soft for a class
/// other than `hard` and for a recipient the queue gave up on.
fn bounce_type(state: RecipientState, class: Option<&BounceClass>) -> Option<&'static str> {
    match state {
        RecipientState::Bounced if class.is_some_and(|c| c.class != "hard") => Some("soft"),
        RecipientState::Bounced => Some("hard"),
        RecipientState::Expired => Some("soft"),
        _ => None,
    }
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

/// An attempt as the metrics count it (once its outcome is recorded): by
/// result, provider and source, its duration, and a bounce by type and
/// class.
struct AttemptCount {
    result: Option<&'static str>,
    provider: String,
    source: String,
    seconds: f64,
    bounce: Option<(&'static str, String)>,
    /// Recipient domain and reply, for the console's recent failures.
    detail: String,
}

impl AttemptCount {
    fn new(
        provider: &str,
        domain: &str,
        state: RecipientState,
        class: Option<&BounceClass>,
        attempt: &Attempt,
    ) -> AttemptCount {
        let result = match state {
            RecipientState::Delivered => Some("delivered"),
            RecipientState::Deferred => Some("deferred"),
            RecipientState::Bounced => Some("bounced"),
            RecipientState::Expired => Some("expired"),
            RecipientState::Queued | RecipientState::Dropped => None,
        };
        let bounce_type = bounce_type(state, class);
        let class = match (state, class) {
            (RecipientState::Expired, _) => "expired".to_string(),
            (_, Some(c)) => crate::metrics::class_label(&c.class),
            (_, None) => "unclassified".to_string(),
        };
        AttemptCount {
            result,
            provider: provider.to_string(),
            source: attempt.source.clone().unwrap_or_else(|| "none".into()),
            seconds: attempt.duration_ms as f64 / 1000.0,
            bounce: bounce_type.map(|t| (t, class)),
            // Only failures are noted.
            detail: if state == RecipientState::Delivered {
                String::new()
            } else {
                format!(
                    "{} ({provider}): {} {}",
                    domain,
                    attempt.code.map(|c| c.to_string()).unwrap_or_default(),
                    attempt.message
                )
            },
        }
    }

    fn record(self) {
        let Some(result) = self.result else { return };
        let Some(m) = crate::metrics::get() else {
            return;
        };
        m.attempt_seconds
            .get_or_create(&crate::metrics::Provider {
                provider: self.provider.clone(),
            })
            .observe(self.seconds);
        m.attempts
            .get_or_create(&crate::metrics::AttemptResult {
                result,
                provider: self.provider,
                source: self.source,
            })
            .inc();
        if matches!(result, "bounced" | "deferred" | "expired") {
            crate::feedback::recent::note(crate::clock::system_now_ms(), result, self.detail);
        }
        if let Some((bounce_type, class)) = self.bounce {
            m.bounces
                .get_or_create(&crate::metrics::BounceClass { bounce_type, class })
                .inc();
        }
    }
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
