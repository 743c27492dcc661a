//! Counters of the embedded store: kept in memory, written to the file
//! every second and at a clean stop.

use super::*;

impl EmbeddedStore {
    pub(super) fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dirty counters to persist; expired ones are forgotten, and clean
    /// ones (in the file already) idle for a while leave memory.
    pub(super) fn take_dirty_counters(&self) -> Vec<(String, i64, i64)> {
        let now = self.clock.now_ms();
        let mut counters = self.counters();
        counters
            .retain(|_, c| c.expires_at > now && (c.dirty || now - c.used_at < COUNTER_IDLE_MS));
        // Per-recipient counters come and go by the hundred thousand: the
        // table gives back what a burst left empty.
        crate::store::shrink_table(&mut counters);
        counters
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|(k, c)| {
                c.dirty = false;
                (k.clone(), c.value, c.expires_at)
            })
            .collect()
    }

    /// Marks every counter to be written again (a write failed).
    pub(super) fn mark_all_dirty(&self) {
        for c in self.counters().values_mut() {
            c.dirty = true;
        }
    }

    /// Counts in memory (persisted every second): never waits, so policy
    /// scripts may call it without an await.
    pub fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        self.incr_in(&mut self.counters(), self.clock.now_ms(), key, by, ttl)
    }

    /// Counts `amount` against `limit` if the count stays within it.
    pub fn take(&self, key: &str, amount: i64, ttl: Duration, limit: i64) -> Result<bool> {
        self.take_in(
            &mut self.counters(),
            self.clock.now_ms(),
            key,
            amount,
            ttl,
            limit,
        )
    }

    /// Gives back `amount` taken earlier; a counter that is gone stays gone.
    pub fn give(&self, key: &str, amount: i64) -> Result<()> {
        self.give_in(&mut self.counters(), self.clock.now_ms(), key, amount)
    }

    // `incr`, `take` and `give` under a lock of the counters already held
    // (a batch takes it once for all its operations).
    pub(super) fn incr_in(
        &self,
        counters: &mut Counters,
        now: i64,
        key: &str,
        by: i64,
        ttl: Duration,
    ) -> Result<i64> {
        self.with_counter(counters, now, key, Some(ttl), |v| {
            *v = v.saturating_add(by);
            *v
        })
        .map(|v| v.unwrap_or(by))
    }

    pub(super) fn take_in(
        &self,
        counters: &mut Counters,
        now: i64,
        key: &str,
        amount: i64,
        ttl: Duration,
        limit: i64,
    ) -> Result<bool> {
        self.with_counter(counters, now, key, Some(ttl), |v| {
            let after = v.saturating_add(amount);
            let fits = after <= limit;
            if fits {
                *v = after;
            }
            fits
        })
        .map(|taken| taken.unwrap_or(false))
    }

    pub(super) fn give_in(
        &self,
        counters: &mut Counters,
        now: i64,
        key: &str,
        amount: i64,
    ) -> Result<()> {
        self.with_counter(counters, now, key, None, |v| {
            *v = v.saturating_sub(amount).max(0)
        })
        .map(|_| ())
    }

    /// Applies `change` to a live counter, or to a new one starting at 0
    /// that expires after `ttl` (None: no new counter, nothing happens).
    pub(super) fn with_counter<T>(
        &self,
        counters: &mut Counters,
        now: i64,
        key: &str,
        ttl: Option<Duration>,
        change: impl FnOnce(&mut i64) -> T,
    ) -> Result<Option<T>> {
        if let Some(c) = counters.get_mut(key).filter(|c| c.expires_at > now) {
            c.dirty = true;
            c.used_at = now;
            return Ok(Some(change(&mut c.value)));
        }
        // Not in memory: start from what the file holds (written before a
        // restart), if it is still live.
        let (stored, expires_at) = match (self.stored_kv(key)?, ttl) {
            (Some((raw, exp)), _) => (
                std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0),
                exp,
            ),
            (None, Some(ttl)) => (0, now + ttl.as_millis() as i64),
            (None, None) => return Ok(None),
        };
        let c = counters
            .entry(key.to_string())
            .and_modify(|c| {
                if c.expires_at <= now {
                    c.value = stored;
                    c.expires_at = expires_at;
                }
            })
            .or_insert(Counter {
                value: stored,
                expires_at,
                dirty: false,
                used_at: now,
            });
        c.dirty = true;
        c.used_at = now;
        Ok(Some(change(&mut c.value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    pub(super) async fn counters_count_in_memory_and_survive_a_clean_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.redb");
        let ttl = Duration::from_secs(60);
        {
            let store = EmbeddedStore::open(&path, ttl, Clock::system()).expect("open");
            for want in 1..=3 {
                assert_eq!(store.incr("c", 1, ttl).expect("incr"), want);
            }
            assert_eq!(store.incr("c", -1, ttl).expect("incr"), 2);
            assert_eq!(store.get("c").await.expect("get"), Some(b"2".to_vec()));
            store.close();
            // The writer commits what it was handed before it stops.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let store = EmbeddedStore::open(&path, ttl, Clock::system()).expect("reopen");
        assert_eq!(store.get("c").await.expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.incr("c", 5, ttl).expect("incr"), 7);
        assert!(store.delete("c").await.expect("delete"));
        assert_eq!(store.get("c").await.expect("get"), None);
        // An expired counter starts over.
        let short = Duration::from_millis(50);
        assert_eq!(store.incr("d", 1, short).expect("incr"), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.incr("d", 1, short).expect("incr"), 1);
    }

    #[tokio::test]
    pub(super) async fn a_take_counts_only_within_its_limit_and_a_give_never_makes_a_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ttl = Duration::from_secs(60);
        let store =
            EmbeddedStore::open(&dir.path().join("kiln.redb"), ttl, Clock::system()).expect("open");
        assert!(store.take("t", 2, ttl, 3).expect("take"));
        assert!(!store.take("t", 2, ttl, 3).expect("take"), "4 > 3");
        assert!(store.take("t", 1, ttl, 3).expect("take"));
        assert!(!store.take("t", 1, ttl, 3).expect("take"));
        assert_eq!(store.get("t").await.expect("get"), Some(b"3".to_vec()));
        store.give("t", 2).expect("give");
        assert_eq!(store.get("t").await.expect("get"), Some(b"1".to_vec()));
        store.give("t", 5).expect("give");
        assert_eq!(
            store.get("t").await.expect("get"),
            Some(b"0".to_vec()),
            "never below 0"
        );
        store.give("nothing", 1).expect("give");
        assert_eq!(store.get("nothing").await.expect("get"), None);
        assert!(!store.take("big", 4, ttl, 3).expect("take"));
        assert_eq!(store.get("big").await.expect("get"), Some(b"0".to_vec()));
    }
}
