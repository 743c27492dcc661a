//! The queue: the one owner of queue state on this node.
//!
//! Admission calls [`QueueHandle::submit`], which makes the message durable
//! and wakes the manager. The manager leases ready entries from the store as
//! egress has room for them and hands them over (`manager::Dispatch`);
//! egress reports each attempt's outcome and `outcome` decides what it
//! means (next try, final) and records it: no other part changes a
//! recipient's queue state.

pub mod cache;
pub mod control;
pub mod manager;
pub mod outcome;

use crate::config::QueueSettings;
use crate::store::{NewMessage, Store, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct QueueHandle {
    pub store: Store,
    pub wake: Arc<Notify>,
    pub cache: Arc<cache::BodyCache>,
    /// The operator's suspensions and bounces.
    pub controls: Arc<control::Controls>,
    schedule: outcome::Schedule,
}

impl QueueHandle {
    pub fn new(store: Store, cache_bytes: usize, settings: &QueueSettings) -> QueueHandle {
        QueueHandle {
            controls: Arc::new(control::Controls::new(store.clone(), settings.max_age)),
            store,
            wake: Arc::new(Notify::new()),
            cache: Arc::new(cache::BodyCache::new(cache_bytes)),
            schedule: outcome::Schedule::new(settings),
        }
    }

    /// Durable on return; delivery starts right away.
    pub async fn submit(&self, msg: &NewMessage) -> Result<(), StoreError> {
        self.store.enqueue(msg).await?;
        // A message held back (e.g. to tomorrow) is read from the store then.
        if msg.ready_at_ms <= msg.received_at_ms {
            self.cache
                .insert(&msg.id, msg.body.clone(), msg.queued_count());
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The body of a queued message, from memory when possible.
    pub async fn body(&self, msg_id: &str) -> Result<Option<Arc<[u8]>>, StoreError> {
        if let Some(b) = self.cache.get(msg_id) {
            return Ok(Some(b));
        }
        self.store.body(msg_id).await
    }
}
