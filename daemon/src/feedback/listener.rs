//! What feedback does with each outcome the queue records: the event (its
//! callback job written in the outcome's commit, its log line after), the
//! daily statistics, the reputation hook's feed, the metrics and the
//! console's recent failures. The queue calls it through
//! `queue::report::Listener`, in the same order for every cause.

use super::events::Events;
use crate::event::{Event, EventKind};
use crate::policy::outcome_feed::OutcomeFeed;
use crate::queue::report::{Cause, Listener, Outcome};
use crate::queued::RecipientState;
use crate::ses::stats::{DailyStats, Metric};
use crate::store::Write;
use futures::future::BoxFuture;
use std::sync::Arc;

pub struct OutcomeListener {
    pub events: Events,
    pub stats: Arc<DailyStats>,
    pub outcomes: Arc<OutcomeFeed>,
}

/// The event an outcome is (None: a state no event reports).
pub fn event_of(o: &Outcome<'_>) -> Option<Event> {
    let kind = match o.state {
        RecipientState::Delivered => EventKind::Delivered,
        RecipientState::Deferred => EventKind::Deferred,
        RecipientState::Bounced | RecipientState::Expired => EventKind::Bounce,
        RecipientState::Dropped => EventKind::Dropped,
        RecipientState::Queued => return None,
    };
    let e = &o.entry;
    let mut event = Event::new(
        o.at_ms,
        kind,
        &e.msg_id,
        &e.recipient,
        &e.sender,
        &e.account,
    );
    event.event_id = o.id.clone();
    event.bounce_type = o.bounce_type().unwrap_or_default().to_string();
    event.sent_at = e.received_at_ms;
    event.template_id = e.template_id.clone();
    event.task_id = e.task_id.clone();
    event.reason = o.reason.clone();
    Some(event)
}

impl Listener for OutcomeListener {
    fn writes_for<'a>(&'a self, o: &'a Outcome<'_>) -> Option<BoxFuture<'a, Vec<Write>>> {
        // Callbacks are an account's: mail without one files none.
        if o.entry.account.is_empty() {
            return None;
        }
        let e = event_of(o)?;
        Some(Box::pin(async move { self.events.writes_for(&e).await }))
    }

    fn recorded(&self, o: &Outcome<'_>) {
        if o.is_the_senders() {
            let domain = crate::net::domain_of(&o.entry.sender).to_ascii_lowercase();
            match o.state {
                RecipientState::Delivered => {
                    self.outcomes.record(&domain, "delivered");
                    self.stats
                        .record(&domain, &o.entry.recipient, Metric::Delivered, 1);
                }
                RecipientState::Bounced | RecipientState::Expired => {
                    self.outcomes.record(&domain, "bounce");
                    if o.class.as_ref().is_some_and(|c| c.invalid_address) {
                        self.outcomes.record(&domain, "invalid");
                    }
                    if o.class.as_ref().is_some_and(|c| c.class == "spam") {
                        self.outcomes.record(&domain, "spam");
                    }
                    self.stats
                        .record(&domain, &o.entry.recipient, Metric::Bounce, 1);
                }
                _ => {}
            }
        }
        count(o);
        if let Some(e) = event_of(o) {
            Events::log(&e);
        }
    }
}

/// The metrics of an outcome: an attempt by result, provider and source
/// with its duration, a bounce by type and class; failures go to the
/// console's recent list.
fn count(o: &Outcome<'_>) {
    let Some(m) = crate::metrics::get() else {
        return;
    };
    let bounce = o.bounce_type().map(|t| {
        let class = match (&o.cause, o.state, &o.class) {
            (Cause::Operator { .. }, _, _) => "operator".to_string(),
            (_, RecipientState::Expired, _) => "expired".to_string(),
            (_, _, Some(c)) => crate::metrics::class_label(&c.class),
            (_, _, None) => "unclassified".to_string(),
        };
        (t, class)
    });
    if let (Some((bounce_type, class)), false) = (bounce, o.state == RecipientState::Dropped) {
        m.bounces
            .get_or_create(&crate::metrics::BounceClass { bounce_type, class })
            .inc();
    }
    let Cause::Attempt { provider } = &o.cause else {
        return;
    };
    // The metrics' label for an attempt no MX took.
    let provider = provider.as_deref().unwrap_or("none");
    let result = match o.state {
        RecipientState::Delivered => "delivered",
        RecipientState::Deferred => "deferred",
        RecipientState::Bounced => "bounced",
        RecipientState::Expired => "expired",
        RecipientState::Queued | RecipientState::Dropped => return,
    };
    let attempt = o.attempt.as_ref();
    m.attempt_seconds
        .get_or_create(&crate::metrics::Provider {
            provider: provider.to_string(),
        })
        .observe(attempt.map_or(0, |a| a.duration_ms) as f64 / 1000.0);
    m.attempts
        .get_or_create(&crate::metrics::AttemptResult {
            result,
            provider: provider.to_string(),
            source: attempt
                .and_then(|a| a.source.clone())
                .unwrap_or_else(|| "none".into()),
        })
        .inc();
    if result != "delivered" {
        let (code, reply) = attempt.map_or((String::new(), ""), |a| {
            (
                a.code.map(|c| c.to_string()).unwrap_or_default(),
                a.message.as_str(),
            )
        });
        super::recent::note(
            crate::clock::system_now_ms(),
            result,
            format!("{} ({provider}): {code} {reply}", o.entry.domain()),
        );
    }
}
