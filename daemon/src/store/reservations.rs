//! Units of limited counters (`take`) that this node has already counted in
//! Redis and not spent yet, so that most takes need no round trip.
//!
//! The cluster's total stays within every limit: a unit is counted in Redis
//! before any node spends it. What a node asks for grows as it keeps using
//! a counter (a counter used once is counted exactly) and shrinks as the
//! counter nears its limit (down to exactly what is needed), so what nodes
//! hold unspent is small precisely when other nodes could use it; a node
//! that stops using a counter gives its units back soon after. A node that
//! dies holding units leaves them counted: a limit can be undershot by what one
//! grant holds, never overshot. Units given back where none are held go
//! straight back to Redis, so a small limit is exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much of what is left under a limit one grant may hold.
pub const SHARE_DIVISOR: i64 = 8;
/// The most units one grant holds (what a crashed node can strand).
pub const MAX_GRANT: i64 = 1000;
/// Units unused this long go back to Redis.
pub const IDLE_RETURN: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Reservations {
    ledger: Mutex<Ledger>,
}

/// What is held, behind one lock: a batch takes it once for all its takes.
#[derive(Default)]
pub struct Ledger {
    held: HashMap<String, Held>,
}

#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub left: i64,
    /// When the counter in Redis expires (None: it does not); units of an
    /// expired counter count for nothing.
    pub expires: Option<Instant>,
    /// How many units the next grant may hold beyond what it is asked
    /// for: 0 for a counter new here, doubling with every grant, so that a
    /// counter used once (a new recipient's) is counted exactly and leaves
    /// nothing to give back, and a busy one soon needs few round trips.
    pub ahead: i64,
    used: Instant,
}

/// What a take that needs Redis finds held: `left` units towards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Withdrawn {
    pub left: i64,
    pub expires: Option<Instant>,
    pub ahead: i64,
}

impl Withdrawn {
    /// How far ahead the grant after this one may go.
    pub fn next_ahead(&self) -> i64 {
        (self.ahead * 2).clamp(1, MAX_GRANT)
    }
}

impl Held {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

impl Reservations {
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hold(&self, key: &str, held: Withdrawn, now: Instant) {
        self.ledger().hold(key, held, now)
    }

    /// What goes back to Redis now: units unused for `idle`. Units of
    /// expired counters are dropped.
    pub fn due(&self, now: Instant, idle: Duration) -> Vec<(String, i64)> {
        self.ledger().due(now, idle)
    }

    /// How many counters have units held here, and how many units in all.
    pub fn summary(&self, now: Instant) -> (usize, i64) {
        let ledger = self.ledger();
        ledger
            .held
            .values()
            .filter(|h| h.live(now) && h.left > 0)
            .fold((0, 0), |(n, units), h| (n + 1, units + h.left))
    }

    /// Everything held, for a node that stops.
    pub fn all(&self, now: Instant) -> Vec<(String, i64)> {
        self.due(now, Duration::ZERO)
    }
}

impl Ledger {
    /// Spends `amount` held units of `key`; false (nothing spent) when
    /// fewer are held.
    pub fn spend(&mut self, key: &str, amount: i64, now: Instant) -> bool {
        match self.held.get_mut(key) {
            Some(h) if h.live(now) && h.left >= amount => {
                h.left -= amount;
                h.used = now;
                true
            }
            _ => false,
        }
    }

    /// Whether `spend` of `amount` would succeed (it changes nothing).
    pub fn can_spend(&self, key: &str, amount: i64, now: Instant) -> bool {
        amount <= 0
            || self
                .held
                .get(key)
                .is_some_and(|h| h.live(now) && h.left >= amount)
    }

    /// Whether `give` of `amount` would stay on this node.
    pub fn can_give(&self, key: &str, amount: i64, now: Instant) -> bool {
        amount <= 0
            || self
                .held
                .get(key)
                .is_some_and(|h| h.live(now) && h.left > 0)
    }

    /// Takes out and answers what is held of `key` (0 units if nothing
    /// live), so a grant from Redis can top it up. How far ahead grants
    /// go stays, so that takes waiting on Redis at once all ask as far.
    pub fn withdraw(&mut self, key: &str, now: Instant) -> Withdrawn {
        match self.held.get_mut(key) {
            Some(h) if h.live(now) => {
                let out = Withdrawn {
                    left: h.left,
                    expires: h.expires,
                    ahead: h.ahead,
                };
                h.left = 0;
                out
            }
            _ => Withdrawn::default(),
        }
    }

    /// Holds `held.left` more units of `key` (which expires at
    /// `held.expires`) and remembers how far ahead its next grant may go,
    /// also when no unit is left.
    pub fn hold(&mut self, key: &str, held: Withdrawn, now: Instant) {
        let h = self.held.entry(key.to_string()).or_insert(Held {
            left: 0,
            expires: held.expires,
            ahead: 0,
            used: now,
        });
        if !h.live(now) {
            h.left = 0;
        }
        h.left += held.left.max(0);
        h.expires = held.expires;
        h.ahead = h.ahead.max(held.ahead);
        h.used = now;
    }

    /// Takes back `amount` spent units if the counter's units are held
    /// here (true); otherwise they must go back to Redis now, so that the
    /// limit is exact where nothing is held (near it).
    pub fn give(&mut self, key: &str, amount: i64, now: Instant) -> bool {
        if amount <= 0 {
            return true;
        }
        match self.held.get_mut(key).filter(|h| h.live(now) && h.left > 0) {
            Some(h) => {
                h.left += amount;
                h.used = now;
                true
            }
            None => false,
        }
    }

    fn due(&mut self, now: Instant, idle: Duration) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        self.held.retain(|key, h| {
            if !h.live(now) {
                return false;
            }
            if now.duration_since(h.used) < idle {
                return true;
            }
            if h.left > 0 {
                out.push((key.clone(), h.left));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(left: i64, expires: Option<Instant>) -> Withdrawn {
        Withdrawn {
            left,
            expires,
            ahead: 0,
        }
    }

    #[test]
    fn grants_go_further_ahead_as_a_counter_keeps_being_used() {
        let r = Reservations::default();
        let now = Instant::now();
        let first = r.ledger().withdraw("k", now);
        assert_eq!(first.ahead, 0, "a counter new here is counted exactly");
        r.hold(
            "k",
            Withdrawn {
                left: 0,
                ahead: first.next_ahead(),
                ..first
            },
            now,
        );
        assert!(
            !r.ledger().give("k", 1, now),
            "nothing held: straight back to Redis"
        );
        let mut ahead = Vec::new();
        for _ in 0..12 {
            let w = r.ledger().withdraw("k", now);
            ahead.push(w.ahead);
            r.hold(
                "k",
                Withdrawn {
                    left: 0,
                    ahead: w.next_ahead(),
                    ..w
                },
                now,
            );
        }
        assert_eq!(ahead, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
        assert_eq!(r.summary(now), (0, 0), "remembered, not held");
    }

    #[test]
    fn held_units_are_spent_until_none_are_left() {
        let r = Reservations::default();
        let now = Instant::now();
        r.hold("k", held(3, None), now);
        assert!(r.ledger().spend("k", 2, now));
        assert!(!r.ledger().spend("k", 2, now), "one left, two wanted");
        assert!(r.ledger().spend("k", 1, now));
        assert!(!r.ledger().spend("k", 1, now));
        assert!(!r.ledger().spend("other", 1, now));
    }

    #[test]
    fn units_of_an_expired_counter_count_for_nothing() {
        let r = Reservations::default();
        let now = Instant::now();
        r.hold("k", held(5, Some(now + Duration::from_millis(10))), now);
        let later = now + Duration::from_millis(11);
        assert!(!r.ledger().spend("k", 1, later));
        assert_eq!(r.ledger().withdraw("k", later), Withdrawn::default());
        r.hold("k", held(5, Some(now + Duration::from_millis(10))), now);
        assert!(r.due(later, Duration::ZERO).is_empty(), "nothing to return");
    }

    #[test]
    fn idle_units_are_returned_and_a_give_adds_to_what_is_held() {
        let r = Reservations::default();
        let now = Instant::now();
        r.hold("idle", held(4, None), now);
        r.hold("busy", held(4, None), now);
        assert!(
            !r.ledger().give("gone", 2, now),
            "nothing held: back to Redis"
        );
        let later = now + IDLE_RETURN;
        assert!(r.ledger().spend("busy", 1, later));
        assert_eq!(r.due(later, IDLE_RETURN), vec![("idle".into(), 4)]);
        assert!(
            !r.ledger().spend("idle", 1, later),
            "returned units are gone"
        );
        assert!(r.ledger().give("busy", 1, later));
        assert_eq!(r.summary(later), (1, 4));
        assert!(
            r.ledger().spend("busy", 4, later),
            "a give adds to what is held"
        );
        assert_eq!(r.summary(later), (0, 0));
        assert_eq!(r.all(later), Vec::<(String, i64)>::new());
    }

    #[test]
    fn a_withdrawal_empties_the_hold() {
        let r = Reservations::default();
        let now = Instant::now();
        let exp = Some(now + Duration::from_secs(5));
        r.hold("k", held(2, exp), now);
        assert_eq!(r.ledger().withdraw("k", now), held(2, exp));
        assert!(!r.ledger().spend("k", 1, now));
    }
}
