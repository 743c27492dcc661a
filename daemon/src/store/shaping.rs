//! What egress shaping shares between the nodes that send: pacing (the next
//! free send time of a limit, so messages are evenly spaced) and slots (how
//! many connections are open). On Redis every node of a cluster counts
//! together; the embedded store is one node and keeps them in memory (they
//! need no durability: after a restart nothing is open or due).

use super::{Result, Store};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The answer to a request for send times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    /// Granted: the first of the send times, in µs since the epoch; the
    /// others follow it one interval apart.
    Granted(i64),
    /// Not within the horizon asked for: the first free time (µs).
    NotBefore(i64),
}

/// A slot holder whose node died is forgotten after this long (Redis).
pub const SLOT_TTL: Duration = Duration::from_secs(15);

/// The pacing and slots of the embedded store: this node's alone.
#[derive(Default)]
pub struct LocalShaping {
    /// Limit → its next free send time (µs).
    pace: Mutex<HashMap<String, i64>>,
    /// Slot set → its holders.
    slots: Mutex<HashMap<String, Vec<String>>>,
}

/// Keys in a map of limits are dropped once this many exist and theirs
/// are long past.
const SWEEP_AT: usize = 10_000;

impl LocalShaping {
    pub fn pace(&self, key: &str, now_us: i64, interval_us: i64, n: u32, within_us: i64) -> Paced {
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        if pace.len() >= SWEEP_AT && !pace.contains_key(key) {
            pace.retain(|_, tat| *tat > now_us);
        }
        let tat = pace.get(key).copied().unwrap_or(0).max(now_us);
        if tat - now_us > within_us {
            return Paced::NotBefore(tat);
        }
        pace.insert(key.to_string(), tat + interval_us * n as i64);
        Paced::Granted(tat)
    }

    pub fn slot_take(&self, key: &str, holder: &str, limit: u32) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let held = slots.entry(key.to_string()).or_default();
        if held.iter().any(|h| h == holder) {
            return true;
        }
        if held.len() >= limit as usize {
            return false;
        }
        held.push(holder.to_string());
        true
    }

    pub fn slot_give(&self, key: &str, holder: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = slots.get_mut(key) {
            held.retain(|h| h != holder);
            if held.is_empty() {
                slots.remove(key);
            }
        }
    }
}

impl Store {
    /// Asks `key` for `n` send times `interval_us` apart, the first no
    /// sooner than now and no later than `within_us` from now; on Redis for
    /// every node together.
    pub async fn pace(&self, key: &str, interval_us: i64, n: u32, within_us: i64) -> Result<Paced> {
        let now_us = self.now_ms() * 1000;
        match self {
            Store::Embedded(s) => Ok(s.shaping().pace(key, now_us, interval_us, n, within_us)),
            Store::Redis(s) => s.pace(key, now_us, interval_us, n, within_us).await,
        }
    }

    /// Takes one of `limit` slots of `key` for `holder` (already held: true).
    pub async fn slot_take(&self, key: &str, holder: &str, limit: u32) -> Result<bool> {
        match self {
            Store::Embedded(s) => Ok(s.shaping().slot_take(key, holder, limit)),
            Store::Redis(s) => s.slot_take(key, holder, limit).await,
        }
    }

    pub async fn slot_give(&self, key: &str, holder: &str) -> Result<()> {
        match self {
            Store::Embedded(s) => {
                s.shaping().slot_give(key, holder);
                Ok(())
            }
            Store::Redis(s) => s.slot_give(key, holder).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_are_spaced_and_far_ones_refused() {
        let s = LocalShaping::default();
        assert_eq!(s.pace("k", 1_000, 100, 1, 500), Paced::Granted(1_000));
        assert_eq!(s.pace("k", 1_000, 100, 3, 500), Paced::Granted(1_100));
        // 1,400 is next: within 500 of 1,000.
        assert_eq!(s.pace("k", 1_000, 100, 1, 500), Paced::Granted(1_400));
        assert_eq!(s.pace("k", 1_000, 100, 1, 300), Paced::NotBefore(1_500));
        // Time that passed unused is not saved up.
        assert_eq!(s.pace("k", 9_000, 100, 1, 0), Paced::Granted(9_000));
        assert_eq!(s.pace("other", 9_000, 100, 1, 0), Paced::Granted(9_000));
    }

    #[test]
    fn slots_are_limited_per_key() {
        let s = LocalShaping::default();
        assert!(s.slot_take("k", "a", 2));
        assert!(s.slot_take("k", "a", 2), "held already");
        assert!(s.slot_take("k", "b", 2));
        assert!(!s.slot_take("k", "c", 2));
        assert!(s.slot_take("j", "c", 2));
        s.slot_give("k", "a");
        assert!(s.slot_take("k", "c", 2));
    }
}
