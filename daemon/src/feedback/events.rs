//! Events (`crate::event`): what happened to a message for one recipient
//! (delivered, deferred, dropped, bounce, and, from the deliverability
//! loop, open, click, spamreport, unsubscribe). Each is one structured log line
//! (target `kiln::event`) and, when the account or the sender address has a
//! callback URL, a callback job (see `callbacks`).
//!
//! Emitting waits for the callback job to be in the store, never for the
//! receiver. A delivery outcome's callback job is written in the same
//! commit as the outcome itself.

use crate::event::{Event, EventKind};
use std::sync::Arc;

/// Emits events: the log line, then the callback job in the store.
#[derive(Clone)]
pub struct Events {
    callbacks: Arc<crate::feedback::callbacks::Callbacks>,
    store: crate::store::Store,
    /// How long a message's trail is kept (as its status record).
    retention: std::time::Duration,
}

impl Events {
    pub fn new(
        callbacks: Arc<crate::feedback::callbacks::Callbacks>,
        store: crate::store::Store,
        retention: std::time::Duration,
    ) -> Events {
        Events {
            callbacks,
            store,
            retention,
        }
    }

    /// The structured log line of an event.
    pub fn log(e: &Event) {
        if let Some(m) = crate::metrics::get() {
            m.events
                .get_or_create(&crate::metrics::EventType {
                    event: e.event.as_str(),
                })
                .inc();
        }
        tracing::info!(
            target: "kiln::event",
            event = %e.event,
            event_id = %e.event_id,
            msg_id = %e.message_id,
            recipient = %e.recipient,
            from = %e.from,
            account = %e.account,
            reason = %e.reason,
            bounce_type = %e.bounce_type,
            link = %e.link,
            "event"
        );
    }

    /// The store changes that file the event's callback, for a caller
    /// that writes them together with the outcome the event reports; it
    /// then logs the event with [`Events::log`].
    pub async fn writes_for(&self, e: &Event) -> Vec<crate::store::Write> {
        if e.account.is_empty() {
            return Vec::new();
        }
        self.callbacks.writes_for(e).await
    }

    /// Logs the event and files its callback (if it has somewhere to go)
    /// before returning: once this returns, a restart does not lose it.
    /// The receiver is not involved: that happens later, elsewhere.
    pub async fn emit(&self, e: Event) {
        Self::log(&e);
        let mut writes = if e.account.is_empty() {
            Vec::new()
        } else {
            self.callbacks.writes_for(&e).await
        };
        // What the status record does not tell: the message's trail.
        if e.event != EventKind::Dropped {
            let step = crate::feedback::trail::Step {
                at_ms: e.at,
                what: e.event.as_str().to_string(),
                recipient: e.recipient.clone(),
                text: describe(&e),
            };
            writes.extend(
                crate::feedback::trail::write(&self.store, &e.message_id, &step, self.retention)
                    .await,
            );
        }
        if let Err(err) = self.store.write(&writes).await {
            tracing::error!(event_id = %e.event_id, error = %err, "event not recorded (callback, trail)");
        }
    }
}

impl crate::services::FeedbackView for Events {
    fn emit(&self, e: Event) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(Events::emit(self, e))
    }

    fn forget_routes(&self) {
        self.callbacks.forget_routes();
    }
}

/// An event as its trail step says it.
fn describe(e: &Event) -> String {
    let mut parts = Vec::new();
    if !e.reason.is_empty() {
        parts.push(e.reason.clone());
    }
    if !e.link.is_empty() {
        parts.push(format!("link {}", e.link));
    }
    if !e.ip.is_empty() {
        parts.push(format!("from {}", e.ip));
    }
    if !e.user_agent.is_empty() {
        parts.push(format!(
            "({})",
            e.user_agent.chars().take(80).collect::<String>()
        ));
    }
    parts.join(" ")
}
