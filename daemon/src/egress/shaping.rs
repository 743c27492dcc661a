//! Traffic shaping per (provider, source): how many connections may be
//! open, how fast messages and new connections may go, and the adaptive
//! part: a throttling signal (a reply the `egress_signal` hook recognises)
//! suspends the pair for a while and cuts its pace, which then climbs back
//! by half again each quiet period, to the configured limits.
//!
//! Limits count on every node together: connection slots and send times
//! are kept by the store (on Redis shared, on the embedded store this
//! node's), and so is the throttle state, which each node reads again
//! within a second. Rates are smooth: messages are spaced evenly at a
//! little under the limit (`RATE_MARGIN`), never sent in a burst, so a
//! receiver counting over any window of the limit's length sees no more
//! than the limit even with a few milliseconds of jitter.

use crate::policy::decisions::{Limits, Signal};
use crate::store::shaping::Paced;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Rates are paced at this share of the limit.
pub const RATE_MARGIN: f64 = 0.98;
/// A send time further away than this is not waited for in memory: the
/// entry goes back to the queue, due then.
pub const WAIT_AT_MOST: Duration = Duration::from_secs(1);
/// Throttle state read from the store is used for this long.
const THROTTLE_FRESH: Duration = Duration::from_secs(1);
/// A second factor cut this soon after the first is not applied again (a
/// burst of refusals from connections already open is one signal).
const CUT_SETTLES_MS: i64 = 10_000;
/// How far a pace can be cut.
const MIN_FACTOR: f64 = 0.05;
/// Each quiet period multiplies a cut factor by this, up to 1.
const RECOVER_STEP: f64 = 1.5;
const DEFAULT_RECOVER_MS: i64 = 300_000;
/// Throttle records are kept this long after the last signal.
const THROTTLE_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Send times asked for at once, at most this long's worth of the rate
/// (on Redis, fewer round trips; the embedded store asks for one).
const BLOCK: Duration = Duration::from_millis(50);

/// What throttling signals did to a (provider, source), shared by the
/// nodes through the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Throttle {
    pub suspended_until_ms: i64,
    /// While suspended, its mail goes to the pool's other sources.
    pub other_source: bool,
    /// The pace factor right after the last cut (0: never cut).
    pub factor: f64,
    pub cut_at_ms: i64,
    pub recover_ms: i64,
    /// The rate cut from, when no limit is configured: what it was
    /// sending at (messages a second).
    pub base_per_s: Option<f64>,
    pub last: Option<Action>,
}

/// The last signal acted on: kept as data for the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Action {
    pub rule: String,
    pub at_ms: i64,
    pub reply: String,
    pub stage: String,
    pub suspended_until_ms: i64,
    pub factor: f64,
}

impl Throttle {
    pub fn suspended(&self, now_ms: i64) -> bool {
        now_ms < self.suspended_until_ms
    }

    /// The pace factor now: the cut one until the suspension ends and a
    /// quiet period passes, then half again more each period, up to 1.
    pub fn factor_at(&self, now_ms: i64) -> f64 {
        if self.factor <= 0.0 || self.factor >= 1.0 {
            return 1.0;
        }
        let start = self.cut_at_ms.max(self.suspended_until_ms);
        let period = if self.recover_ms > 0 {
            self.recover_ms
        } else {
            DEFAULT_RECOVER_MS
        };
        let steps = ((now_ms - start).max(0) / period) as i32;
        (self.factor * RECOVER_STEP.powi(steps)).min(1.0)
    }
}

/// The limits in force: the configured ones with the pace factor applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    pub connections: u32,
    pub messages_per_connection: u32,
    /// Between two messages (None: no rate limit).
    pub message_interval_us: Option<i64>,
    /// The shortest counted window (a second, or a minute) and the
    /// messages it may hold, checked on when messages really go.
    pub window: Option<(u32, Duration)>,
    pub connect_interval_us: Option<i64>,
}

/// The messages a second a limit set allows, if it limits them.
fn rate_per_s(l: &Limits) -> Option<f64> {
    [
        l.per_second,
        l.per_minute.map(|m| m / 60.0),
        l.per_hour.map(|h| h / 3600.0),
    ]
    .into_iter()
    .flatten()
    .filter(|r| *r > 0.0)
    .reduce(f64::min)
}

pub fn effective(l: &Limits, t: &Throttle, now_ms: i64) -> Effective {
    let f = t.factor_at(now_ms);
    let connections = l.connections.unwrap_or(10).max(1);
    let rate = match rate_per_s(l) {
        Some(r) => Some(r * f),
        None if f < 1.0 => t.base_per_s.map(|b| b * f),
        None => None,
    };
    Effective {
        connections: ((connections as f64 * f).floor() as u32).max(1),
        messages_per_connection: l.messages_per_connection.unwrap_or(100).max(1),
        message_interval_us: rate.map(|r| (1e6 / (r * RATE_MARGIN)).ceil() as i64),
        window: match (l.per_second, l.per_minute) {
            (Some(n), _) if n > 0.0 => {
                Some(((n * f).floor().max(1.0) as u32, Duration::from_secs(1)))
            }
            (_, Some(n)) if n > 0.0 => {
                Some(((n * f).floor().max(1.0) as u32, Duration::from_secs(60)))
            }
            _ => None,
        },
        connect_interval_us: l
            .new_connections_per_minute
            .filter(|n| *n > 0.0)
            .map(|n| (60e6 / (n * f * RATE_MARGIN)).ceil() as i64),
    }
}

/// The right to send one message of a pair now; it counts as sent when
/// dropped.
pub struct SendPermit<'a> {
    sent: tokio::sync::MutexGuard<'a, VecDeque<Instant>>,
    counts: bool,
}

impl SendPermit<'_> {
    /// Gives the permit back unused: nothing is counted.
    pub fn cancel(mut self) {
        self.counts = false;
    }
}

impl Drop for SendPermit<'_> {
    fn drop(&mut self) {
        if self.counts {
            self.sent.push_back(Instant::now());
        }
    }
}

/// Send times this node holds for one limit.
#[derive(Default)]
struct Block {
    next_us: i64,
    left: u32,
    interval_us: i64,
}

/// One (provider, source) on this node.
pub struct Shape {
    pub provider: Arc<str>,
    pub source: Arc<str>,
    /// The provider as a metrics label (`other` for a site).
    pub label: String,
    limits: Mutex<Limits>,
    throttle: Mutex<(Throttle, Option<Instant>)>,
    messages: tokio::sync::Mutex<Block>,
    connects: tokio::sync::Mutex<Block>,
    /// Woken when this node gives a connection slot back.
    pub freed: Notify,
    /// When recent attempts ended: the rate a cut starts from.
    finished: Mutex<VecDeque<Instant>>,
    /// The due time handed to the last entry sent back to the queue.
    park_cursor_ms: Mutex<i64>,
    /// When this node's last messages for the pair left, as many as the
    /// shortest window may hold; locked from the check until the message
    /// has left, so no two sends of the pair overtake each other.
    sent: tokio::sync::Mutex<VecDeque<Instant>>,
}

impl Shape {
    fn key(&self, what: &str) -> String {
        format!("{what}:{}|{}", self.provider, self.source)
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The throttle state as last read (fresh within a second).
    pub fn throttle_cached(&self) -> Throttle {
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Waits until a message may go without this node putting more than
    /// `limit` messages of the pair in any `window`. The message counts
    /// from when the permit is dropped: once its MAIL command has left.
    /// A send time granted by the store can be kept late (a busy machine
    /// wakes a task some milliseconds after its time, or stops it between
    /// the check and the write), and a late message followed by one on
    /// time would be closer together than the pace: so the window is
    /// checked again on when messages really leave, which lets a late pace
    /// catch up without ever breaking the limit.
    pub async fn space(&self, (limit, window): (u32, Duration)) -> SendPermit<'_> {
        // As the pace: a receiver's clock that differs by up to 2 % of the
        // window (20 ms for a second) still counts within the limit.
        let window = window.div_f64(RATE_MARGIN);
        let mut sent = self.sent.lock().await;
        while sent.len() > limit as usize {
            sent.pop_front();
        }
        if sent.len() == limit as usize
            && let Some(first) = sent.front()
        {
            tokio::time::sleep_until((*first + window).into()).await;
            sent.pop_front();
        }
        SendPermit { sent, counts: true }
    }

    pub fn finished_attempt(&self) {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() == 64 {
            f.pop_front();
        }
        f.push_back(Instant::now());
    }

    /// Attempts a second over the last minute, if there were some.
    fn measured_rate(&self) -> Option<f64> {
        let f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let recent: Vec<&Instant> = f
            .iter()
            .filter(|t| t.elapsed() < Duration::from_secs(60))
            .collect();
        let first = recent.first()?;
        (recent.len() >= 2).then(|| recent.len() as f64 / first.elapsed().as_secs_f64().max(1.0))
    }

    /// When an entry that cannot go now should be due: after those sent
    /// back before it, `step_ms` apart, no sooner than `not_before_ms`.
    pub fn park_at(&self, not_before_ms: i64, step_ms: i64) -> i64 {
        let mut cursor = self
            .park_cursor_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let at = (*cursor + step_ms.max(1)).max(not_before_ms);
        *cursor = at;
        at
    }
}

/// (provider, source).
type PairKey = (Arc<str>, Arc<str>);

pub struct Shaper {
    store: Store,
    shapes: Mutex<HashMap<PairKey, Arc<Shape>>>,
}

impl Shaper {
    pub fn new(store: Store) -> Shaper {
        Shaper {
            store,
            shapes: Mutex::new(HashMap::new()),
        }
    }

    /// The shape of (provider, source), its limits brought up to date.
    /// `named`: the plan names the provider (else it is a site).
    pub fn shape(
        &self,
        provider: &Arc<str>,
        source: &Arc<str>,
        limits: Limits,
        named: bool,
    ) -> Arc<Shape> {
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        let shape = shapes
            .entry((provider.clone(), source.clone()))
            .or_insert_with(|| {
                Arc::new(Shape {
                    provider: provider.clone(),
                    source: source.clone(),
                    label: crate::metrics::provider_label(provider, named),
                    limits: Mutex::new(limits),
                    throttle: Mutex::new((Throttle::default(), None)),
                    messages: Default::default(),
                    connects: Default::default(),
                    freed: Notify::new(),
                    finished: Mutex::new(VecDeque::new()),
                    park_cursor_ms: Mutex::new(0),
                    sent: tokio::sync::Mutex::new(VecDeque::new()),
                })
            })
            .clone();
        *shape.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        shape
    }

    /// Every shape this node has used, for the operator's view.
    pub fn shapes(&self) -> Vec<Arc<Shape>> {
        self.shapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    /// The throttle state, read from the store when the copy here is
    /// over a second old (a store error keeps the old copy).
    pub async fn throttle(&self, shape: &Shape) -> Throttle {
        {
            let t = shape.throttle.lock().unwrap_or_else(|p| p.into_inner());
            if t.1.is_some_and(|at| at.elapsed() < THROTTLE_FRESH) {
                return t.0.clone();
            }
        }
        let read = match self.store.get(&shape.key("egress:throttle")).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => Some(Throttle::default()),
            Err(e) => {
                tracing::warn!(error = %e, "reading a throttle state failed");
                None
            }
        };
        let mut t = shape.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(read) = read {
            t.0 = read;
        }
        t.1 = Some(Instant::now());
        t.0.clone()
    }

    /// Acts on a throttling signal: suspends the pair and cuts its pace as
    /// the rule says, records it for every node, and logs it.
    pub async fn signal(&self, shape: &Shape, s: &Signal, reply: &str, stage: &str) -> Throttle {
        let now = self.now_ms();
        // The freshest state: another node may have acted a moment ago.
        {
            let mut t = shape.throttle.lock().unwrap_or_else(|p| p.into_inner());
            t.1 = None;
        }
        let mut t = self.throttle(shape).await;
        if let Some(secs) = s.suspend_s.filter(|s| *s > 0.0) {
            t.suspended_until_ms = t
                .suspended_until_ms
                .max(now.saturating_add((secs * 1000.0) as i64));
            t.other_source = s.other_source;
        }
        if let Some(f) = s.factor.filter(|f| *f > 0.0 && *f < 1.0) {
            let current = t.factor_at(now);
            if current >= 1.0 || now - t.cut_at_ms > CUT_SETTLES_MS {
                if rate_per_s(&shape.limits()).is_none() {
                    t.base_per_s = shape.measured_rate().or(t.base_per_s);
                }
                t.factor = (current * f).max(MIN_FACTOR);
                t.cut_at_ms = now;
                t.recover_ms = s
                    .recover_s
                    .map_or(DEFAULT_RECOVER_MS, |r| (r * 1000.0) as i64);
            }
        }
        t.last = Some(Action {
            rule: s.rule.clone(),
            at_ms: now,
            reply: reply.chars().take(300).collect(),
            stage: stage.to_string(),
            suspended_until_ms: t.suspended_until_ms,
            factor: t.factor_at(now),
        });
        if let Some(m) = crate::metrics::get() {
            m.shaping_signals
                .get_or_create(&crate::metrics::SignalRule {
                    provider: shape.label.clone(),
                    source: shape.source.to_string(),
                    rule: s.rule.clone(),
                })
                .inc();
        }
        tracing::warn!(
            target: "kiln::shaping",
            provider = %shape.provider,
            source = %shape.source,
            rule = %s.rule,
            stage,
            suspended_for_s = ((t.suspended_until_ms - now).max(0) / 1000),
            factor = t.factor_at(now),
            other_source = t.other_source && t.suspended(now),
            reply,
            "throttling signal"
        );
        let bytes = serde_json::to_vec(&t).unwrap_or_default();
        if let Err(e) = self
            .store
            .put(&shape.key("egress:throttle"), &bytes, Some(THROTTLE_TTL))
            .await
        {
            tracing::error!(error = %e, "recording a throttle state failed");
        }
        let mut cached = shape.throttle.lock().unwrap_or_else(|p| p.into_inner());
        *cached = (t.clone(), Some(Instant::now()));
        t
    }

    /// A send time for the next message, if the pair limits its rate:
    /// Ok(None) when it does not, Ok(Some(Granted(µs))) to send then,
    /// Ok(Some(NotBefore(µs))) when the next free one is beyond
    /// `WAIT_AT_MOST`.
    pub async fn message_time(
        &self,
        shape: &Shape,
        e: &Effective,
    ) -> Result<Option<Paced>, StoreError> {
        self.paced(shape, &shape.messages, "egress:pace", e.message_interval_us)
            .await
    }

    /// Like `message_time`, for opening a connection.
    pub async fn connect_time(
        &self,
        shape: &Shape,
        e: &Effective,
    ) -> Result<Option<Paced>, StoreError> {
        self.paced(
            shape,
            &shape.connects,
            "egress:connects",
            e.connect_interval_us,
        )
        .await
    }

    /// A send time on `block`'s limit (`what`), one `interval_us` after the
    /// last; None when the limit sets no interval.
    async fn paced(
        &self,
        shape: &Shape,
        block: &tokio::sync::Mutex<Block>,
        what: &str,
        interval_us: Option<i64>,
    ) -> Result<Option<Paced>, StoreError> {
        let Some(interval_us) = interval_us else {
            return Ok(None);
        };
        let mut b = block.lock().await;
        let now_us = self.now_ms() * 1000;
        // Times held here are used unless the pace changed or they passed
        // (two passed ones would go out together: a burst).
        if b.left > 0 && b.interval_us == interval_us && b.next_us >= now_us {
            let at = b.next_us;
            b.next_us += interval_us;
            b.left -= 1;
            return Ok(Some(Paced::Granted(at)));
        }
        let n = match &self.store {
            Store::Embedded(_) => 1,
            Store::Redis(_) => ((BLOCK.as_micros() as i64 / interval_us.max(1)) as u32).max(1),
        };
        let within = WAIT_AT_MOST.as_micros() as i64;
        let paced = self
            .store
            .pace(&shape.key(what), interval_us, n, within)
            .await?;
        if let Paced::Granted(first) = paced {
            *b = Block {
                next_us: first + interval_us,
                left: n - 1,
                interval_us,
            };
        }
        Ok(Some(paced))
    }

    /// Takes one of the pair's connection slots for `holder`.
    pub async fn take_connection(
        &self,
        shape: &Shape,
        holder: &str,
        e: &Effective,
    ) -> Result<bool, StoreError> {
        self.store
            .slot_take(&shape.key("egress:conn"), holder, e.connections)
            .await
    }

    pub async fn give_connection(&self, shape: &Shape, holder: &str) {
        if let Err(e) = self
            .store
            .slot_give(&shape.key("egress:conn"), holder)
            .await
        {
            tracing::warn!(error = %e, "giving a connection slot back failed");
        }
        shape.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            connections: Some(10),
            messages_per_connection: Some(20),
            per_second: Some(100.0),
            per_minute: Some(3000.0),
            per_hour: None,
            new_connections_per_minute: Some(60.0),
        }
    }

    #[test]
    fn the_strictest_rate_sets_the_spacing() {
        let e = effective(&limits(), &Throttle::default(), 0);
        // 3,000 a minute is 50 a second, stricter than 100; at 98 %.
        assert_eq!(e.message_interval_us, Some(20_409));
        assert_eq!(e.connect_interval_us, Some(1_020_409));
        assert_eq!((e.connections, e.messages_per_connection), (10, 20));
        let none = effective(&Limits::default(), &Throttle::default(), 0);
        assert_eq!(none.message_interval_us, None);
    }

    #[test]
    fn a_cut_holds_through_the_suspension_then_climbs_back() {
        let t = Throttle {
            suspended_until_ms: 60_000,
            factor: 0.25,
            cut_at_ms: 0,
            recover_ms: 100_000,
            ..Throttle::default()
        };
        assert!(t.suspended(59_999) && !t.suspended(60_000));
        assert_eq!(t.factor_at(100_000), 0.25);
        assert_eq!(t.factor_at(160_000), 0.375);
        assert_eq!(t.factor_at(360_000), 0.84375);
        assert_eq!(t.factor_at(460_000), 1.0);
        let e = effective(&limits(), &t, 100_000);
        assert_eq!(e.connections, 2);
        assert_eq!(e.message_interval_us, Some(81_633));
    }

    #[test]
    fn without_a_configured_rate_a_cut_paces_from_what_was_sent() {
        let mut l = limits();
        (l.per_second, l.per_minute) = (None, None);
        let t = Throttle {
            factor: 0.5,
            cut_at_ms: 0,
            base_per_s: Some(40.0),
            ..Throttle::default()
        };
        assert_eq!(effective(&l, &t, 1_000).message_interval_us, Some(51_021));
        assert_eq!(
            effective(&l, &Throttle::default(), 1_000).message_interval_us,
            None
        );
    }
}
