//! IP warm-up: a source marked `warmup` sends each provider (or site) a
//! daily volume that follows the `warmup_limit` hook's curve for the
//! identity `<source>/<provider>` (the default plugin's 200, 500, 1,000,
//! 2,000, 5,000, 10,000, then doubling, from the pair's first day). Each
//! attempt from such a source is counted in the store (on Redis, for every
//! node); past the cap the pair is full until the day ends, and its mail
//! goes to the pool's other sources, or waits for the next day.

use super::Delivery;
use crate::store::{BatchOp, BatchValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A cap is asked of the policy again after this long.
const CAP_FRESH: Duration = Duration::from_secs(60);
/// Units a node may count ahead of use on Redis.
const HOLD: i64 = 20;

/// (source, provider).
type PairKey = (Arc<str>, Arc<str>);

#[derive(Clone)]
struct Cap {
    /// None: the policy sets no cap.
    cap: Option<i64>,
    /// The day it is for.
    day: String,
    fetched: Instant,
}

#[derive(Default)]
pub struct Warmup {
    caps: Mutex<HashMap<PairKey, Cap>>,
    /// Pairs over today's cap, until the day ends (ms).
    full: Mutex<HashMap<PairKey, i64>>,
}

impl Warmup {
    /// Until when (source, provider) is over today's cap, if it is.
    pub fn full_until(&self, source: &Arc<str>, provider: &Arc<str>, now_ms: i64) -> Option<i64> {
        let full = self.full.lock().unwrap_or_else(|p| p.into_inner());
        full.get(&(source.clone(), provider.clone()))
            .copied()
            .filter(|until| *until > now_ms)
    }
}

/// What a warm-up count said about one attempt.
pub enum Counted {
    /// Within today's cap (or no cap): go ahead.
    Go,
    /// Over it: the pair is full until the day ends.
    Full,
}

impl Delivery {
    /// Counts one attempt from a warm-up source to `provider` against
    /// today's cap. A failing hook or store lets the attempt go (warm-up
    /// protects reputation; it never holds mail hostage to a script error),
    /// and is logged.
    pub(super) async fn warmup_count(&self, source: &Arc<str>, provider: &Arc<str>) -> Counted {
        let key = (source.clone(), provider.clone());
        let identity = format!("{source}/{provider}");
        let now = self.store.now_ms();
        let tz = self.policy.time_zone();
        let day = crate::policy::time::day(tz, now).unwrap_or_default();
        let cached = {
            let caps = self.warmup.caps.lock().unwrap_or_else(|p| p.into_inner());
            caps.get(&key)
                .filter(|c| c.day == day && c.fetched.elapsed() < CAP_FRESH)
                .cloned()
        };
        let cap = match cached {
            Some(c) => c.cap,
            None => {
                let answer = self
                    .policy
                    .call(
                        crate::policy::hooks::WarmupLimit,
                        &crate::policy::decisions::WarmupQuery {
                            identity: identity.clone(),
                            now,
                        },
                    )
                    .await;
                let cap = match answer {
                    Ok(a) => a.map(|a| a.cap.max(0.0) as i64),
                    Err(e) => {
                        tracing::warn!(target: "kiln::shaping", %identity, error = %e, "warmup_limit failed; not capped");
                        None
                    }
                };
                let mut caps = self.warmup.caps.lock().unwrap_or_else(|p| p.into_inner());
                caps.insert(
                    key.clone(),
                    Cap {
                        cap,
                        day: day.clone(),
                        fetched: Instant::now(),
                    },
                );
                cap
            }
        };
        let Some(cap) = cap else {
            return Counted::Go;
        };
        let next_day = crate::policy::time::next_day_start(tz, now).unwrap_or(now + 86_400_000);
        let op = BatchOp::Take {
            key: format!("egress:warmup:{identity}:{day}"),
            amount: 1,
            ttl: Duration::from_secs(2 * 86_400),
            limit: cap,
            hold_at_most: HOLD,
        };
        match self.store.batch(&[op]).await.as_deref() {
            Ok([BatchValue::Bool(true)]) => Counted::Go,
            Ok(_) => {
                tracing::info!(target: "kiln::shaping", %identity, cap, "warm-up cap reached for today; mail goes to the pool's other sources");
                self.warmup
                    .full
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, next_day);
                Counted::Full
            }
            Err(e) => {
                tracing::warn!(target: "kiln::shaping", %identity, error = %e, "warm-up count failed; not capped");
                Counted::Go
            }
        }
    }
}
