//! The queue: the one owner of queue state on this node.
//!
//! Admission calls [`QueueHandle::submit`], which makes the message durable
//! and wakes the manager. The manager leases ready entries from the store,
//! holds back what an operator's rule holds, and hands the rest to egress
//! as it has room for them (`manager::Dispatch`); egress reports how each
//! attempt ended and [`QueueHandle::report`] decides what it means (next
//! try, final), records it and tells feedback (`report::Listener`): no
//! other part changes a recipient's queue state.

pub mod cache;
pub mod control;
pub mod manager;
pub mod outcome;
pub mod report;
#[cfg(test)]
mod report_tests;

use crate::config::QueueSettings;
use crate::policy::Policy;
use crate::queued::{NewMessage, QueueEntry};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct QueueHandle {
    store: Store,
    wake: Arc<Notify>,
    cache: Arc<cache::BodyCache>,
    /// The operator's suspensions and bounces.
    controls: Arc<control::Controls>,
    schedule: outcome::Schedule,
    /// For `classify_bounce`.
    policy: Arc<Policy>,
    /// Who hears of every outcome (feedback).
    listener: Arc<dyn report::Listener>,
    /// `server.node_id`, recorded with each attempt.
    node_id: String,
    /// Outcomes recorded in the background (an operator's bounces).
    tasks: tokio_util::task::TaskTracker,
}

impl QueueHandle {
    pub fn new(
        store: Store,
        cache_bytes: usize,
        settings: &QueueSettings,
        policy: Arc<Policy>,
        listener: Arc<dyn report::Listener>,
        node_id: String,
    ) -> QueueHandle {
        QueueHandle {
            controls: Arc::new(control::Controls::new(store.clone(), settings.max_age)),
            store,
            wake: Arc::new(Notify::new()),
            cache: Arc::new(cache::BodyCache::new(cache_bytes)),
            schedule: outcome::Schedule::new(settings),
            policy,
            listener,
            node_id,
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Durable on return, with the events of the recipients the policy
    /// dropped; delivery starts right away.
    pub async fn submit(&self, msg: &NewMessage) -> Result<(), StoreError> {
        let entries = report::dropped_entries(msg);
        let dropped = self.dropped_outcomes(msg, &entries);
        let mut also = Vec::new();
        for outcome in &dropped {
            also.extend(self.writes_for(outcome).await);
        }
        self.store.enqueue(msg, &also).await?;
        // A message held back (e.g. to tomorrow) is read from the store then.
        if msg.ready_at_ms <= msg.received_at_ms {
            self.cache
                .insert(&msg.id, msg.body.clone(), msg.queued_count());
        }
        self.wake.notify_one();
        for outcome in &dropped {
            self.listener.recorded(outcome);
        }
        Ok(())
    }

    /// The body of a queued message, from memory when possible.
    pub async fn body(&self, msg_id: &str) -> Result<Option<Arc<[u8]>>, StoreError> {
        if let Some(b) = self.cache.get(msg_id) {
            return Ok(Some(b));
        }
        self.store.body(msg_id).await
    }

    /// The operator's rules, as this node last read them.
    pub fn controls(&self) -> &Arc<control::Controls> {
        &self.controls
    }

    /// Makes the entries of `keys` due now (those not being attempted) and
    /// wakes the manager; answers how many.
    pub async fn make_due(&self, keys: &[String]) -> Result<usize, StoreError> {
        let made = self.store.make_due(keys).await?;
        self.wake.notify_one();
        Ok(made)
    }

    /// Leased entries given back unattempted, due now (shutdown): another
    /// node may take them at once.
    pub async fn release(&self, entries: &[QueueEntry]) -> Result<(), StoreError> {
        self.store.release(entries).await
    }

    /// Whether an operator's rule holds `entry` back, asked when the queue
    /// hands it out and again by egress as it learns its provider and
    /// source (None: not known yet). A suspended entry comes back parked
    /// until the suspension's park time (resuming makes it due); a bounced
    /// one is settled by the queue, in the background.
    pub fn hold(&self, entry: QueueEntry, provider: Option<&str>, source: Option<&str>) -> Hold {
        match self.controls.control(&entry, provider, source) {
            control::Control::Go => Hold::Go(entry),
            control::Control::Suspended(rule) => {
                let mut entry = entry;
                entry.ready_at_ms = control::park_until(&rule, self.store.now_ms());
                Hold::Parked(entry)
            }
            control::Control::Bounce(rule) => {
                let this = self.clone();
                self.tasks.spawn(async move {
                    this.report(&entry, report::Report::Operator(rule)).await;
                });
                Hold::Bounced
            }
        }
    }

    /// Waits for the outcomes being recorded in the background (before the
    /// store closes).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Whether a time is one a suspension parks entries until (resuming
    /// finds them by it).
    pub fn is_park_time(&self, at_ms: i64) -> bool {
        self.controls.is_park_time(at_ms)
    }

    /// The park time of a suspension of `source` in force, if any.
    pub fn source_suspended_until(&self, source: &str) -> Option<i64> {
        self.controls
            .source_suspension(source)
            .map(|rule| control::park_until(&rule, self.store.now_ms()))
    }
}

/// What an operator's rules make of an entry about to go.
pub enum Hold {
    Go(QueueEntry),
    /// Suspended: back to the queue, due at its `ready_at_ms`.
    Parked(QueueEntry),
    /// Bounced by the operator: the queue records it.
    Bounced,
}
