//! What this node last read from Redis for batches that accept an answer of
//! bounded age (`Store::batch_within`): a key's value, or whether a set
//! holds a member. This node's own writes remove what they change, so it
//! always reads its own writes; another node's show once the entry is older
//! than the reader accepts.

use super::BatchValue;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The oldest answer any reader may accept; older entries are swept.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Entries kept at most: beyond it, answers are not kept (reads still work).
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Read {
    /// A key (its full Redis name).
    Key(String),
    /// A member of a set (the set's full Redis name).
    Member(String, String),
}

#[derive(Default)]
pub struct ReadCache {
    entries: Mutex<HashMap<Read, (Instant, BatchValue)>>,
}

impl ReadCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Read, (Instant, BatchValue)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer read at most `max_age` before `now`, if there is one.
    pub fn get(&self, read: &Read, max_age: Duration, now: Instant) -> Option<BatchValue> {
        let entries = self.entries();
        let (at, value) = entries.get(read)?;
        (now.saturating_duration_since(*at) <= max_age).then(|| value.clone())
    }

    pub fn put(&self, read: Read, value: BatchValue, now: Instant) {
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) <= MAX_AGE);
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        entries.insert(read, (now, value));
    }

    /// Forgets what was read of a key this node has just changed.
    pub fn forget_key(&self, key: &str) {
        let mut entries = self.entries();
        if !entries.is_empty() {
            entries.remove(&Read::Key(key.to_string()));
        }
    }

    /// Forgets what was read of a set member this node has just changed.
    pub fn forget_member(&self, set: &str, member: &str) {
        let mut entries = self.entries();
        if !entries.is_empty() {
            entries.remove(&Read::Member(set.to_string(), member.to_string()));
        }
    }

    /// Drops entries no reader may use any more.
    pub fn sweep(&self, now: Instant) {
        self.entries()
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= MAX_AGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_used_only_within_the_age_asked_for() {
        let c = ReadCache::default();
        let now = Instant::now();
        let k = Read::Key("k".into());
        c.put(k.clone(), BatchValue::Int(3), now);
        let later = now + Duration::from_millis(500);
        assert_eq!(
            c.get(&k, Duration::from_secs(1), later),
            Some(BatchValue::Int(3))
        );
        assert_eq!(c.get(&k, Duration::from_millis(499), later), None);
        assert_eq!(c.get(&k, Duration::ZERO, now), Some(BatchValue::Int(3)));
    }

    #[test]
    fn a_write_here_forgets_what_was_read() {
        let c = ReadCache::default();
        let now = Instant::now();
        let m = Read::Member("s".into(), "a@x".into());
        c.put(m.clone(), BatchValue::Bool(false), now);
        c.put(Read::Key("k".into()), BatchValue::Int(1), now);
        c.forget_member("s", "a@x");
        c.forget_key("k");
        let age = Duration::from_secs(1);
        assert_eq!(c.get(&m, age, now), None);
        assert_eq!(c.get(&Read::Key("k".into()), age, now), None);
    }

    #[test]
    fn old_entries_are_swept() {
        let c = ReadCache::default();
        let now = Instant::now();
        c.put(Read::Key("k".into()), BatchValue::Int(1), now);
        c.sweep(now + MAX_AGE + Duration::from_millis(1));
        assert_eq!(c.get(&Read::Key("k".into()), MAX_AGE * 2, now), None);
    }
}
