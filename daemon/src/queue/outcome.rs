//! What an attempt's outcome means for a recipient: delivered, bounced,
//! expired, or deferred to a time from `queue.retry_schedule` (the
//! [`Schedule`]), and how that is recorded. `report` is the one caller.

use super::QueueHandle;
use crate::config::QueueSettings;
use crate::queued::{Attempt, Disposition, QueueEntry, RecipientState, RecipientStatus};
use crate::store::{StoreError, Write};

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
    /// Records an attempt and the decision made for it, with `also` in the
    /// same commit. If the store cannot record it, the entry is handed back
    /// to be tried again (at worst delivered twice, never lost); if even
    /// that fails its lease expires and another lease takes it.
    pub(super) async fn settle(
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
}
