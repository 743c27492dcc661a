//! What an attempt's outcome means for the queue, decided here and nowhere
//! else: egress reports how an attempt ended (or that it was not made), the
//! queue turns that into the recipient's next state (delivered, bounced,
//! expired, or deferred to a time from `queue.retry_schedule`) and records
//! it, with whatever else must be durable in the same commit (the outcome's
//! event and callback job). Reports that come back later (a DSN) go
//! through here too.

use super::QueueHandle;
use crate::config::QueueSettings;
use crate::store::{
    Attempt, Disposition, QueueEntry, RecipientState, RecipientStatus, StoreError, Write,
};

/// How one attempt ended, as egress saw it (after `classify_bounce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth another try later.
    Temporary,
    /// Final: the recipient bounces.
    Permanent,
}

/// The queue's decision for one recipient after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub state: RecipientState,
    /// When the next attempt is due (a deferred recipient only).
    pub next_attempt_at_ms: Option<i64>,
}

/// The retry schedule and the queue's maximum age.
#[derive(Debug, Clone)]
pub struct Schedule {
    retry_ms: Vec<i64>,
    max_age_ms: i64,
}

impl Schedule {
    pub fn new(q: &QueueSettings) -> Schedule {
        Schedule {
            retry_ms: q.retry_schedule.iter().map(|s| *s as i64 * 1000).collect(),
            max_age_ms: q.max_age.as_millis() as i64,
        }
    }

    /// What `verdict` means for `entry` at `now`: a temporary failure is
    /// retried after the schedule's next delay (the last one repeats),
    /// with one last try at the deadline rather than none past it; past
    /// the queue's maximum age it expires instead.
    pub fn decide(&self, entry: &QueueEntry, verdict: Verdict, now: i64) -> Decision {
        let deadline = entry.received_at_ms + self.max_age_ms;
        let state = match verdict {
            Verdict::Delivered => RecipientState::Delivered,
            Verdict::Permanent => RecipientState::Bounced,
            Verdict::Temporary if now >= deadline => RecipientState::Expired,
            Verdict::Temporary => RecipientState::Deferred,
        };
        let next_attempt_at_ms = (state == RecipientState::Deferred).then(|| {
            let idx = (entry.attempts as usize).min(self.retry_ms.len().saturating_sub(1));
            let delay = self.retry_ms.get(idx).copied().unwrap_or(3_600_000);
            (now + delay).min(deadline.max(now + 1000))
        });
        Decision {
            state,
            next_attempt_at_ms,
        }
    }
}

impl QueueHandle {
    /// The decision for an attempt that ended with `verdict` now.
    pub fn decide(&self, entry: &QueueEntry, verdict: Verdict) -> Decision {
        self.schedule.decide(entry, verdict, self.store.now_ms())
    }

    /// Records an attempt and the decision made for it, with `also` in the
    /// same commit. If the store cannot record it, the entry is handed back
    /// to be tried again (at worst delivered twice, never lost); if even
    /// that fails its lease expires and another lease takes it.
    pub async fn settle(
        &self,
        entry: &QueueEntry,
        decision: Decision,
        attempt: Attempt,
        also: &[Write],
    ) -> Result<(), StoreError> {
        let mut attempts = if entry.attempts > 0 {
            match self.store.status(&entry.msg_id).await {
                Ok(Some(s)) => s
                    .recipients
                    .into_iter()
                    .nth(entry.rcpt_idx as usize)
                    .map(|r| r.attempts)
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        attempts.push(attempt);
        let status = RecipientStatus {
            recipient: entry.recipient.clone(),
            state: decision.state,
            updated_at_ms: self.store.now_ms(),
            next_attempt_at_ms: decision.next_attempt_at_ms,
            attempts,
            reason: None,
        };
        let disposition = match decision.next_attempt_at_ms {
            Some(at) => {
                let mut next = entry.clone();
                next.attempts += 1;
                next.ready_at_ms = at;
                // Read again from the store when it comes due.
                self.cache.remove(&entry.msg_id);
                Disposition::Retry(Box::new(next), status)
            }
            None => {
                self.cache.recipient_done(&entry.msg_id);
                Disposition::Final(status)
            }
        };
        let settled = self.store.settle(entry, disposition, also).await;
        if let Err(e) = &settled {
            tracing::error!(msg_id = %entry.msg_id, error = %e, "could not record delivery outcome");
            if let Err(e) = self.store.release(std::slice::from_ref(entry)).await {
                tracing::error!(msg_id = %entry.msg_id, error = %e, "could not release entry");
            }
        }
        settled
    }

    /// Entries egress did not attempt (no room, or their destination must
    /// wait), back in the queue due at their `ready_at_ms`; their attempt
    /// count is unchanged.
    pub async fn postpone(&self, entries: &[QueueEntry]) -> Result<(), StoreError> {
        self.store.park(entries).await
    }

    /// A final outcome learnt after the recipient left the queue (a DSN
    /// after the receiver took the message): its status record says what
    /// happened after all, with `also` in the same commit. A recipient still
    /// queued is left to its next attempt (answers false).
    pub async fn record_late_outcome(
        &self,
        msg_id: &str,
        idx: u32,
        status: &RecipientStatus,
        current: RecipientState,
        also: &[Write],
    ) -> Result<bool, StoreError> {
        if !current.is_final() {
            return Ok(false);
        }
        self.store.record_status(msg_id, idx, status, also).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(attempts: u32) -> QueueEntry {
        QueueEntry {
            msg_id: "m".into(),
            rcpt_idx: 0,
            recipient: "r@x.test".into(),
            sender: "s@y.test".into(),
            attempts,
            received_at_ms: 0,
            ready_at_ms: 0,
            require_tls: false,
            source_ip: None,
            pool: String::new(),
            account: String::new(),
            template_id: String::new(),
            task_id: String::new(),
        }
    }

    fn schedule() -> Schedule {
        Schedule::new(&QueueSettings {
            retry_schedule: vec![60, 300],
            max_age: Duration::from_secs(3600),
            ..QueueSettings::default()
        })
    }

    #[test]
    fn temporary_failures_follow_the_schedule_then_expire() {
        let s = schedule();
        let d = s.decide(&entry(0), Verdict::Temporary, 1_000);
        assert_eq!(d.state, RecipientState::Deferred);
        assert_eq!(d.next_attempt_at_ms, Some(61_000));
        // The last delay repeats.
        let d = s.decide(&entry(5), Verdict::Temporary, 10_000);
        assert_eq!(d.next_attempt_at_ms, Some(310_000));
        // Never past the deadline: one last try at it.
        let d = s.decide(&entry(5), Verdict::Temporary, 3_500_000);
        assert_eq!(d.next_attempt_at_ms, Some(3_600_000));
        let d = s.decide(&entry(6), Verdict::Temporary, 3_600_000);
        assert_eq!(
            (d.state, d.next_attempt_at_ms),
            (RecipientState::Expired, None)
        );
    }

    #[test]
    fn delivered_and_permanent_are_final_at_any_age() {
        let s = schedule();
        for (v, state) in [
            (Verdict::Delivered, RecipientState::Delivered),
            (Verdict::Permanent, RecipientState::Bounced),
        ] {
            for now in [0, 99_000_000] {
                let d = s.decide(&entry(0), v, now);
                assert_eq!((d.state, d.next_attempt_at_ms), (state, None));
            }
        }
    }

    /// The queue's whole say over one recipient, on a real store: a
    /// deferral puts it back due later with its attempt recorded, a DSN
    /// while it is queued changes nothing, delivery ends it, and a DSN
    /// after that is recorded.
    #[tokio::test]
    async fn outcomes_move_a_recipient_through_the_queue() {
        use crate::store::{NewMessage, Store, embedded::EmbeddedStore};
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = crate::clock::Clock::test();
        let store = Store::Embedded(
            EmbeddedStore::open(
                &dir.path().join("kiln.redb"),
                Duration::from_secs(600),
                clock.clone(),
            )
            .expect("store"),
        );
        let queue = QueueHandle::new(store.clone(), 1 << 20, &QueueSettings::default());
        let now = store.now_ms();
        queue
            .submit(&NewMessage {
                id: "m1".into(),
                account: "acme".into(),
                sender: "news@acme.test".into(),
                recipients: vec!["ann@dest.test".into()],
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
            })
            .await
            .expect("submit");
        let lease = Duration::from_secs(60);
        let attempt = |code: u16| Attempt {
            at_ms: store.now_ms(),
            mx: None,
            ip: None,
            code: Some(code),
            enhanced_code: None,
            message: format!("{code} reply"),
            tls: None,
            duration_ms: 0,
            source: None,
            shaping: None,
            outcome: None,
            node: None,
        };
        let recipient = |store: Store| async move {
            let s = store.status("m1").await.expect("status").expect("known");
            s.recipients[0].clone()
        };

        let entry = store.lease(10, lease).await.expect("lease").remove(0);
        let d = queue.decide(&entry, Verdict::Temporary);
        assert_eq!(d.state, RecipientState::Deferred);
        queue
            .settle(&entry, d, attempt(451), &[])
            .await
            .expect("settle");
        let r = recipient(store.clone()).await;
        assert_eq!((r.state, r.attempts.len()), (RecipientState::Deferred, 1));
        // A minute after the attempt (the test clock follows real time).
        let next = r.next_attempt_at_ms.expect("due again") - now;
        assert!((60_000..61_000).contains(&next), "{next}");
        assert!(
            store.lease(10, lease).await.expect("lease").is_empty(),
            "due later"
        );

        let mut bounced = r.clone();
        bounced.state = RecipientState::Bounced;
        let taken = queue
            .record_late_outcome("m1", 0, &bounced, r.state, &[])
            .await
            .expect("late");
        assert!(!taken, "a queued recipient is left to its next attempt");
        assert_eq!(
            recipient(store.clone()).await.state,
            RecipientState::Deferred
        );

        clock.advance(Duration::from_secs(60)).expect("test clock");
        let entry = store.lease(10, lease).await.expect("lease").remove(0);
        assert_eq!(entry.attempts, 1);
        let d = queue.decide(&entry, Verdict::Delivered);
        queue
            .settle(&entry, d, attempt(250), &[])
            .await
            .expect("settle");
        let r = recipient(store.clone()).await;
        assert_eq!((r.state, r.attempts.len()), (RecipientState::Delivered, 2));
        assert_eq!(store.queue_len().await.expect("len"), 0);

        let taken = queue
            .record_late_outcome("m1", 0, &bounced, r.state, &[])
            .await
            .expect("late");
        assert!(taken);
        assert_eq!(recipient(store).await.state, RecipientState::Bounced);
    }
}
