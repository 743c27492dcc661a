//! Kiln's time: what "now" is for queue times, expiries, days and quotas.
//! In production the system's wall clock. In tests a clock that follows
//! tokio's (under `tokio::time::pause`, `tokio::time::advance` moves it) and
//! can jump forward (a day roll-over, a retry an hour away). It is handed to
//! each part that needs it, never a global: two nodes in one test process
//! have a clock each.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct Clock(Arc<Inner>);

struct Inner {
    kind: Kind,
    /// Woken when a test clock jumps: whoever waits for a time re-reads it.
    jumped: Notify,
}

enum Kind {
    System,
    Test {
        /// The wall clock when the test clock was made, and tokio's then.
        wall_ms: i64,
        start: tokio::time::Instant,
        /// Jumps so far.
        offset_ms: AtomicI64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("the clock moves only with server.test_clock = true")]
pub struct NotATestClock;

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Inner {
            kind: Kind::System,
            jumped: Notify::new(),
        }))
    }

    /// Starts at the wall clock's time and follows tokio's from there.
    pub fn test() -> Clock {
        Clock(Arc::new(Inner {
            kind: Kind::Test {
                wall_ms: system_now_ms(),
                start: tokio::time::Instant::now(),
                offset_ms: AtomicI64::new(0),
            },
            jumped: Notify::new(),
        }))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.0.kind {
            Kind::System => system_now_ms(),
            Kind::Test {
                wall_ms,
                start,
                offset_ms,
            } => wall_ms + start.elapsed().as_millis() as i64 + offset_ms.load(Ordering::Relaxed),
        }
    }

    pub fn is_test(&self) -> bool {
        matches!(self.0.kind, Kind::Test { .. })
    }

    /// Jumps a test clock forward; answers the jumps so far.
    pub fn advance(&self, by: Duration) -> Result<i64, NotATestClock> {
        self.jump(i64::try_from(by.as_millis()).unwrap_or(i64::MAX))
    }

    /// Jumps a test clock by `ms`, forward or back, as a system clock that
    /// is stepped does; answers the jumps so far.
    pub fn jump(&self, ms: i64) -> Result<i64, NotATestClock> {
        let Kind::Test { offset_ms, .. } = &self.0.kind else {
            return Err(NotATestClock);
        };
        let offset = offset_ms
            .fetch_add(ms, Ordering::Relaxed)
            .saturating_add(ms);
        self.0.jumped.notify_waiters();
        Ok(offset)
    }

    /// Resolves when a test clock jumps (never for the system clock).
    pub async fn jumped(&self) {
        self.0.jumped.notified().await
    }
}

/// The system's wall clock, never moved: what clients outside compare with
/// (request signatures).
pub fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time (ms since the epoch) as people read it: RFC 3339, UTC.
pub fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_test_clock_follows_tokio_and_jumps() {
        let clock = Clock::test();
        let t0 = clock.now_ms();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(clock.now_ms() - t0, 60_000);
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.jumped().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            clock.advance(Duration::from_secs(86_400)).unwrap(),
            86_400_000
        );
        assert_eq!(clock.now_ms() - t0, 60_000 + 86_400_000);
        waiting.await.unwrap();
        assert!(Clock::system().advance(Duration::from_secs(1)).is_err());
    }
}
