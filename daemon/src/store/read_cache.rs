//! What this node last read from the store for batches that accept an
//! answer of bounded age (`Store::batch_within`): a key's value, or whether
//! a set holds a member (on Redis; the embedded store keeps a member's
//! row). A write of this node removes what it changed once it is in the
//! store, and an answer that may predate such a write is not kept, so this
//! node reads its own writes; another node's show once the entry is older
//! than the reader accepts.

use super::{BatchValue, shrink_table};
use foldhash::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The oldest answer any reader may accept; older entries are swept.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Entries kept at most: beyond it, answers are not kept (reads still work).
/// Every recipient's checks are reads of their own: a queue of 100,000
/// distinct recipients held 30 MB here at 200,000.
const MAX_ENTRIES: usize = 50_000;

/// A read, by the names the store's callers use (the backend adds its own
/// prefix when it asks Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Key(String),
    /// A member of a set.
    Member(String, String),
}

type Entry<T> = (Instant, T);

/// Whether what was read `at` is at most `max_age` old at `now`.
fn young(at: Instant, now: Instant, max_age: Duration) -> bool {
    now.saturating_duration_since(at) <= max_age
}

/// What is kept, behind one lock: a batch takes it once for all its reads.
#[derive(Default)]
pub struct Entries {
    keys: HashMap<String, Entry<Option<Vec<u8>>>>,
    /// Set → member → whether it holds it.
    members: HashMap<String, HashMap<String, Entry<bool>>>,
    /// Member entries over all sets.
    member_count: usize,
    /// Raised by every forget: a read sent before a write of this node
    /// landed must not be kept after it.
    generation: u64,
    /// When a full cache was last swept: a sweep walks every entry, so a
    /// cache full of young entries is not swept again for a while.
    swept_at: Option<Instant>,
    /// The widest age a reader has accepted (ms): older answers serve no
    /// one and go at the next sweep.
    widest_ms: AtomicU64,
}

/// A full cache is swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Entries {
    /// Notes the age a reader accepts.
    fn asked(&self, max_age: Duration) {
        let ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.widest_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The age past which no reader uses an answer.
    fn useful_age(&self) -> Duration {
        Duration::from_millis(self.widest_ms.load(Ordering::Relaxed)).min(MAX_AGE)
    }

    /// A key's value read at most `max_age` before `now`, if there is one.
    pub fn key(&self, key: &str, max_age: Duration, now: Instant) -> Option<BatchValue> {
        self.asked(max_age);
        let (at, value) = self.keys.get(key)?;
        young(*at, now, max_age).then(|| BatchValue::Bytes(value.clone()))
    }

    /// Whether `set` held `member`, read at most `max_age` before `now`.
    pub fn member(
        &self,
        set: &str,
        member: &str,
        max_age: Duration,
        now: Instant,
    ) -> Option<BatchValue> {
        self.asked(max_age);
        let (at, held) = self.members.get(set)?.get(member)?;
        young(*at, now, max_age).then_some(BatchValue::Bool(*held))
    }

    /// Whether `key` had a value, read at most `max_age` before `now`
    /// (the value itself is not copied).
    pub fn key_present(&self, key: &str, max_age: Duration, now: Instant) -> Option<bool> {
        self.asked(max_age);
        let (at, value) = self.keys.get(key)?;
        young(*at, now, max_age).then_some(value.is_some())
    }

    /// See [`ReadCache::put`].
    pub fn put(&mut self, read: Read, value: &BatchValue, now: Instant, generation: u64) -> bool {
        if self.generation != generation {
            return false;
        }
        if self.len() >= MAX_ENTRIES {
            if self
                .swept_at
                .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
            {
                return false;
            }
            self.swept_at = Some(now);
            self.retain_younger(now, self.useful_age());
            if self.len() >= MAX_ENTRIES {
                return false;
            }
        }
        match (read, value) {
            (Read::Key(key), BatchValue::Bytes(v)) => {
                self.keys.insert(key, (now, v.clone()));
                true
            }
            (Read::Member(set, member), BatchValue::Bool(held)) => {
                let added = self
                    .members
                    .entry(set)
                    .or_default()
                    .insert(member, (now, *held))
                    .is_none();
                self.member_count += usize::from(added);
                true
            }
            _ => false,
        }
    }

    /// See [`ReadCache::generation`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn len(&self) -> usize {
        self.keys.len() + self.member_count
    }

    fn retain_younger(&mut self, now: Instant, age: Duration) {
        self.keys.retain(|_, (at, _)| young(*at, now, age));
        let mut count = 0;
        self.members.retain(|_, m| {
            m.retain(|_, (at, _)| young(*at, now, age));
            count += m.len();
            !m.is_empty()
        });
        self.member_count = count;
    }

    /// Gives back the room of a burst that has left: a table keeps its
    /// size after its entries go (50,000 answers held 8.5 MB of table).
    fn shrink(&mut self) {
        shrink_table(&mut self.keys);
        shrink_table(&mut self.members);
        for m in self.members.values_mut() {
            shrink_table(m);
        }
    }
}

/// Lookups borrow the caller's names: a hit allocates nothing but the
/// answer.
#[derive(Default)]
pub struct ReadCache {
    entries: Mutex<Entries>,
}

impl ReadCache {
    pub fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn key(&self, key: &str, max_age: Duration, now: Instant) -> Option<BatchValue> {
        self.entries().key(key, max_age, now)
    }

    /// To take before a read is sent, and give to `put` with its answer.
    pub fn generation(&self) -> u64 {
        self.entries().generation
    }

    /// Keeps what was read (answers of another shape are not kept), unless
    /// this node changed something since `generation` was taken: the
    /// answer may predate that change. Answers whether it was kept.
    pub fn put(&self, read: Read, value: &BatchValue, now: Instant, generation: u64) -> bool {
        self.entries().put(read, value, now, generation)
    }

    /// Forgets what was read of a key this node has just changed.
    pub fn forget_key(&self, key: &str) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.keys.remove(key);
    }

    /// Forgets what was read of a set member this node has just changed.
    pub fn forget_member(&self, set: &str, member: &str) {
        let mut entries = self.entries();
        entries.generation += 1;
        let removed = entries
            .members
            .get_mut(set)
            .and_then(|m| m.remove(member))
            .is_some();
        entries.member_count -= usize::from(removed);
    }

    /// Forgets everything (a change that may have touched any key).
    pub fn clear(&self) {
        let mut entries = self.entries();
        *entries = Entries {
            generation: entries.generation + 1,
            widest_ms: AtomicU64::new(entries.widest_ms.load(Ordering::Relaxed)),
            ..Entries::default()
        };
    }

    /// Drops entries no reader uses any more, and the room they took.
    pub fn sweep(&self, now: Instant) {
        let mut entries = self.entries();
        let age = entries.useful_age();
        entries.retain_younger(now, age);
        entries.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(c: &ReadCache, read: Read, value: &BatchValue, now: Instant) {
        c.put(read, value, now, c.generation());
    }

    #[test]
    fn an_answer_is_used_only_within_the_age_asked_for() {
        let c = ReadCache::default();
        let now = Instant::now();
        let three = BatchValue::Bytes(Some(b"3".to_vec()));
        keep(&c, Read::Key("k".into()), &three, now);
        let later = now + Duration::from_millis(500);
        assert_eq!(
            c.key("k", Duration::from_secs(1), later),
            Some(three.clone())
        );
        assert_eq!(c.key("k", Duration::from_millis(499), later), None);
        assert_eq!(c.key("k", Duration::ZERO, now), Some(three));
        assert_eq!(c.key("other", Duration::from_secs(1), now), None);
    }

    #[test]
    fn a_write_here_forgets_what_was_read() {
        let c = ReadCache::default();
        let now = Instant::now();
        let age = Duration::from_secs(1);
        keep(
            &c,
            Read::Member("s".into(), "a@x".into()),
            &BatchValue::Bool(false),
            now,
        );
        keep(
            &c,
            Read::Member("s".into(), "b@x".into()),
            &BatchValue::Bool(true),
            now,
        );
        keep(&c, Read::Key("k".into()), &BatchValue::Bytes(None), now);
        assert_eq!(
            c.entries().member("s", "a@x", age, now),
            Some(BatchValue::Bool(false))
        );
        c.forget_member("s", "a@x");
        c.forget_key("k");
        assert_eq!(c.entries().member("s", "a@x", age, now), None);
        assert_eq!(
            c.entries().member("s", "b@x", age, now),
            Some(BatchValue::Bool(true))
        );
        assert_eq!(c.key("k", age, now), None);
        // An answer read before a write here landed is not kept.
        let before = c.generation();
        c.forget_key("other");
        c.put(Read::Key("k".into()), &BatchValue::Bytes(None), now, before);
        assert_eq!(c.key("k", age, now), None);
    }

    #[test]
    fn old_entries_are_swept() {
        let c = ReadCache::default();
        let now = Instant::now();
        keep(&c, Read::Key("k".into()), &BatchValue::Bytes(None), now);
        keep(
            &c,
            Read::Member("s".into(), "m".into()),
            &BatchValue::Bool(true),
            now,
        );
        c.sweep(now + MAX_AGE + Duration::from_millis(1));
        assert_eq!(c.key("k", MAX_AGE * 2, now), None);
        assert_eq!(c.entries().member("s", "m", MAX_AGE * 2, now), None);
        assert_eq!(c.entries().len(), 0);
    }

    /// A cache holding as many answers as it may, all read `at`.
    fn full(at: Instant) -> Entries {
        let mut e = Entries::default();
        for i in 0..MAX_ENTRIES {
            e.keys.insert(format!("k{i}"), (at, None));
        }
        e
    }

    #[test]
    fn a_cache_full_of_young_entries_is_not_swept_on_every_read() {
        let now = Instant::now();
        let mut e = full(now);
        let none = BatchValue::Bytes(None);
        // The first read past the limit sweeps (nothing is old) and is not
        // kept; the next ones within a second do not sweep again.
        assert!(!e.put(Read::Key("a".into()), &none, now, 0));
        let swept = e.swept_at;
        assert_eq!(swept, Some(now));
        let soon = now + Duration::from_millis(10);
        assert!(!e.put(Read::Key("b".into()), &none, soon, 0));
        assert_eq!(e.swept_at, swept);
        // Once entries are old, a sweep a second later makes room.
        let later = now + MAX_AGE + Duration::from_secs(1);
        assert!(e.put(Read::Key("c".into()), &none, later, 0));
        assert_eq!(e.len(), 1);
    }

    /// A burst of distinct recipients' checks fills the cache; once they
    /// are older than any reader accepts, a sweep gives their room back.
    #[test]
    fn a_sweep_after_a_burst_gives_the_room_back() {
        let c = ReadCache::default();
        let now = Instant::now();
        let none = BatchValue::Bytes(None);
        for i in 0..20_000 {
            keep(&c, Read::Key(format!("rcpt:{i}@x.test")), &none, now);
            keep(
                &c,
                Read::Member("blocked".into(), format!("{i}@x.test")),
                &BatchValue::Bool(false),
                now,
            );
        }
        assert_eq!(
            c.key("rcpt:1@x.test", Duration::from_secs(1), now),
            Some(none.clone())
        );
        let (keys, members) = {
            let e = c.entries();
            (e.keys.capacity(), e.members["blocked"].capacity())
        };
        assert!(keys >= 20_000 && members >= 20_000);
        let later = now + Duration::from_secs(2);
        keep(&c, Read::Key("fresh".into()), &none, later);
        keep(
            &c,
            Read::Member("blocked".into(), "fresh@x.test".into()),
            &BatchValue::Bool(false),
            later,
        );
        c.sweep(later);
        let e = c.entries();
        assert_eq!(e.len(), 2);
        assert!(e.keys.capacity() < 100, "{} slots kept", e.keys.capacity());
        let set = e.members["blocked"].capacity();
        assert!(set < 100, "{set} slots kept for the set");
    }

    /// A full cache makes room by dropping answers older than any reader
    /// accepts (here 1 s), not only those past the widest age allowed.
    #[test]
    fn a_full_cache_drops_what_no_reader_would_use() {
        let now = Instant::now();
        let mut e = full(now);
        let none = BatchValue::Bytes(None);
        assert_eq!(e.key("k1", Duration::from_secs(1), now), Some(none.clone()));
        let later = now + Duration::from_secs(2);
        assert!(later < now + MAX_AGE);
        assert!(e.put(Read::Key("fresh".into()), &none, later, 0));
        assert_eq!(e.len(), 1);
        assert_eq!(e.key("fresh", Duration::from_secs(1), later), Some(none));
    }
}
