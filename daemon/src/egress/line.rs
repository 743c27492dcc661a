//! A line: the jobs for one site (an MX host set) from one source, and the
//! workers that take them, each with a connection it keeps for the next job
//! until it idles out. A line holds a bounded number of jobs: what does not
//! fit goes back to the queue, due when the line should have room, so a
//! slow destination or a tarpit never fills this node's memory or holds up
//! another line.

use super::plan::Source;
use super::shaping::Shape;
use crate::dns::MxHost;
use crate::queued::QueueEntry;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit};

pub struct Job {
    pub entry: QueueEntry,
    /// This node's hold on a leased entry (the manager's budget).
    pub _leased: OwnedSemaphorePermit,
}

/// Attempts finished recently while jobs waited, to measure the pace.
const RATE_WINDOW: usize = 32;
/// A parked entry waits at least this long, at most [`PARK_MAX_MS`].
const PARK_MIN_MS: i64 = 100;
const PARK_MAX_MS: i64 = 300_000;
/// A parked entry is due this much before the line should need it, for
/// the queue to lease it again in time.
const PARK_LEAD_MS: f64 = 250.0;
/// The rate assumed for a destination whose attempts do not finish (a
/// tarpit looks like this): attempts a second.
const STALLED_RATE: f64 = 0.2;
/// An attempt running this long means the destination is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(5);
/// Attempts a second per connection assumed for a destination with no
/// rate limit that has not been measured busy.
const FRESH_RATE_PER_CONNECTION: f64 = 10.0;

#[derive(Default)]
pub struct LineState {
    pub jobs: VecDeque<Job>,
    pub workers: usize,
    pub idle: usize,
    /// Jobs workers have taken from the line and not finished with.
    pub taken: usize,
    /// When each attempt running right now started (a job waiting for a
    /// connection slot or its send time is taken, not attempted).
    attempting: Vec<Instant>,
    /// When the last few attempts that ended with jobs waiting ended: a
    /// line that runs dry says nothing about how fast it could go.
    finished: VecDeque<Instant>,
    /// The due time handed to the last parked entry.
    park_cursor_ms: i64,
}

impl LineState {
    /// Attempts a second the line can make: measured while it was busy,
    /// else what its pace allows (`paced`, when the provider limits the
    /// rate) or assumed for its `connections`; a destination whose
    /// attempts do not finish gets [`STALLED_RATE`].
    pub fn rate(&self, connections: usize, paced: Option<f64>) -> f64 {
        if self.attempting.iter().any(|t| t.elapsed() > STALLED_AFTER) {
            return STALLED_RATE;
        }
        let expected = paced.unwrap_or(connections as f64 * FRESH_RATE_PER_CONNECTION);
        let measured = match (self.finished.front(), self.finished.back()) {
            (Some(first), Some(last))
                if self.finished.len() >= 8 && first.elapsed() < Duration::from_secs(60) =>
            {
                let span = last.duration_since(*first).as_secs_f64().max(0.001);
                (self.finished.len() - 1) as f64 / span
            }
            _ => 0.0,
        };
        expected.max(measured).max(STALLED_RATE)
    }

    /// When a job that does not fit now should be due: when the jobs ahead
    /// of it (those in the line and those parked before it) should be
    /// done, at the line's rate, a little early.
    pub fn park_at(&mut self, now_ms: i64, rate: f64) -> i64 {
        let step = 1000.0 / rate;
        let ahead = (self.jobs.len() + self.taken) as f64 * step - PARK_LEAD_MS;
        let after_parked = self.park_cursor_ms.max(now_ms) as f64 + step;
        let next = after_parked.max(now_ms as f64 + ahead) as i64;
        let next = next.clamp(now_ms + PARK_MIN_MS, now_ms + PARK_MAX_MS);
        self.park_cursor_ms = next;
        next
    }
}

/// Mail for one site from one source.
pub struct Line {
    pub site: Arc<str>,
    pub source: Arc<Source>,
    pub shape: Arc<Shape>,
    /// Where the site's mail goes, as last resolved.
    pub hosts: Mutex<Arc<[MxHost]>>,
    /// A domain of the site, for the require-TLS list and messages.
    pub domain: Mutex<String>,
    pub state: Mutex<LineState>,
    pub wake: Notify,
}

impl Line {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hosts(&self) -> Arc<[MxHost]> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A job a worker took from its line: counted in the line until the
/// worker is done with it, and as an attempt from when one starts.
pub struct Running<'a> {
    line: &'a Line,
    attempted: bool,
}

impl<'a> Running<'a> {
    /// Counts a job as taken from `line` (its lock held by the caller).
    pub fn taken(line: &'a Line, st: &mut LineState) -> Running<'a> {
        st.taken += 1;
        Running {
            line,
            attempted: false,
        }
    }

    /// The job's attempt starts now.
    pub fn attempting(&mut self) {
        self.attempted = true;
        self.line.lock().attempting.push(Instant::now());
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.line.lock();
        st.taken = st.taken.saturating_sub(1);
        if !self.attempted {
            return;
        }
        // The oldest attempt is the one to go: close enough for "is any
        // attempt stuck".
        if !st.attempting.is_empty() {
            st.attempting.remove(0);
        }
        if st.jobs.is_empty() {
            return;
        }
        if st.finished.len() == RATE_WINDOW {
            st.finished.pop_front();
        }
        st.finished.push_back(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_line_parks_at_the_pace_of_its_destination() {
        let now = 1_000_000;
        // No rate limit, not measured: ten a second per connection, so 16
        // connections: 6.25 ms apart, after the empty line's lead.
        let mut fresh = LineState::default();
        let rate = fresh.rate(16, None);
        assert_eq!(rate, 160.0);
        let first = fresh.park_at(now, rate);
        assert_eq!(first, now + PARK_MIN_MS);
        assert_eq!(fresh.park_at(now, rate), first + 6);
        // Paced at 30 a second with 60 jobs ahead: due when those are
        // done (2 s), a quarter second early.
        let mut paced = LineState {
            taken: 60,
            ..LineState::default()
        };
        let rate = paced.rate(2, Some(30.0));
        assert_eq!(rate, 30.0);
        assert_eq!(paced.park_at(now, rate), now + 2000 - 250);
        // Stalled (an attempt running for longer than STALLED_AFTER): five
        // seconds apart, never past PARK_MAX_MS.
        let mut stalled = LineState::default();
        stalled
            .attempting
            .push(Instant::now() - STALLED_AFTER - Duration::from_secs(1));
        let rate = stalled.rate(16, Some(100.0));
        assert_eq!(stalled.park_at(now, rate), now + 5_000);
        assert_eq!(stalled.park_at(now, rate), now + 10_000);
        for _ in 0..100 {
            stalled.park_at(now, rate);
        }
        assert_eq!(stalled.park_at(now, rate), now + PARK_MAX_MS);
        // Measured while busy: 32 attempts in about a second, so about 31
        // a second, more than the 20 assumed for two connections.
        let mut measured = LineState::default();
        let start = Instant::now() - Duration::from_secs(1);
        for i in 0..RATE_WINDOW {
            measured
                .finished
                .push_back(start + Duration::from_millis(i as u64 * 1000 / 32));
        }
        let rate = measured.rate(2, None);
        assert!((25.0..35.0).contains(&rate), "{rate}");
    }
}
