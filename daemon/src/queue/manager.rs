//! The queue manager: leases what is ready, as fast as delivery takes it,
//! and hands it out unless an operator's rule holds it.
//!
//! This node holds at most `max_leased` entries (in destinations' lines or
//! being attempted); an entry a destination's line cannot take is parked
//! back in the queue, due later.

use super::QueueHandle;
use crate::queued::QueueEntry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Where the manager hands what it leased: egress's delivery.
pub trait Dispatch: Send + Sync {
    /// Takes a leased entry (`leased` is this node's hold on it, given
    /// back when the entry is done with), or hands it back, its
    /// `ready_at_ms` set to when it should be due: the manager parks it.
    fn dispatch(
        self: Arc<Self>,
        entry: QueueEntry,
        leased: OwnedSemaphorePermit,
    ) -> Option<QueueEntry>;
}

pub struct Manager {
    pub queue: QueueHandle,
    pub delivery: Arc<dyn Dispatch>,
    /// Entries this node holds at once, waiting in lines or attempted.
    pub max_leased: usize,
    pub lease_time: Duration,
    /// How often to look for work other nodes queued (Redis) or timers.
    pub poll: Duration,
}

impl Manager {
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.max_leased));
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let want = (slots.available_permits() + 1).min(1000);
            let batch = match self.queue.store.lease(want, self.lease_time).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "queue lease failed");
                    drop(first);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if batch.is_empty() {
                drop(first);
                let wait = match self.queue.store.next_ready_ms().await {
                    Ok(Some(t)) => Duration::from_millis(
                        (t - self.queue.store.now_ms()).clamp(1, i64::MAX) as u64,
                    )
                    .min(self.poll),
                    _ => self.poll,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.queue.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    // A test clock that jumps makes entries due at once.
                    _ = self.queue.store.clock().jumped() => {}
                }
                continue;
            }
            let mut permit = Some(first);
            let mut parked = Vec::new();
            for entry in batch {
                let p = match permit.take() {
                    Some(p) => p,
                    None => match slots.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            // Cannot happen (we asked for what was free),
                            // but never drop a leased entry on the floor.
                            match slots.clone().acquire_owned().await {
                                Ok(p) => p,
                                Err(_) => break,
                            }
                        }
                    },
                };
                // The operator's rules first: what they hold never
                // reaches egress.
                match self.queue.hold(entry, None, None) {
                    super::Hold::Go(entry) => {
                        parked.extend(self.delivery.clone().dispatch(entry, p));
                    }
                    super::Hold::Parked(entry) => parked.push(entry),
                    super::Hold::Bounced => {}
                }
            }
            if !parked.is_empty() {
                tracing::debug!(
                    entries = parked.len(),
                    "destination lines full, entries parked"
                );
                if let Err(e) = self.queue.postpone(&parked).await {
                    // Their leases expire; another lease takes them then.
                    tracing::error!(error = %e, "could not park queue entries");
                }
            }
        }
        tracing::info!("queue manager stopped");
    }
}
