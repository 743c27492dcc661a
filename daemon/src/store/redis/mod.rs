//! Redis store: shared by every node of a cluster.
//!
//! Queue keys share one hash tag (`{prefix}`) so every multi-key step is one
//! server-side script, atomic and one round trip. Redis is one server or
//! the master Sentinel names (`conn`).
//! Leases are a sorted set scored by their deadline: a node that dies simply
//! stops settling, and the next `lease` call of any node moves the expired
//! entries back to the ready set.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the store's parts, its keys, connecting |
//! | `conn.rs` | one server, or the master Sentinel names, followed across failovers |
//! | `scripts.rs` | the server-side Lua scripts |
//! | `queue.rs` | messages, queue entries, leases, status records |
//! | `records.rs` | keys, sets, counters, writes |
//! | `batch.rs` | batches: answered here when they can be, else one pipeline |
//! | `shaping.rs` | egress pacing and connection slots, for every node |

use super::{Result, StoreError, Write, decode, encode};
use crate::clock::Clock;
use crate::queued::{
    Disposition, MessageMeta, MessageStatus, NewMessage, QueueEntry, RecipientStatus,
};
use redis::AsyncCommands;
use redis::Script;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::read_cache::{Read, ReadCache};
use super::reservations::{IDLE_RETURN, MAX_GRANT, Reservations, SHARE_DIVISOR, Withdrawn};
use super::{BatchOp, BatchValue, OpRef, prefixed_into};

/// How often unused reserved units go back and old reads are dropped.
const COUNTER_SWEEP: Duration = Duration::from_millis(250);
/// How long one command may take to be answered.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

mod batch;
mod conn;
mod queue;
mod records;
mod scripts;
mod shaping;
#[cfg(test)]
mod tests;

pub use conn::RedisTarget;
use scripts::*;

pub struct RedisStore {
    /// Kiln's time: lease deadlines, ready times, expiries.
    clock: Clock,
    conn: conn::Conn,
    prefix: String,
    retention: Duration,
    enqueue: Script,
    lease: Script,
    settle: Script,
    release: Script,
    incr: Script,
    renew: Script,
    pace: Script,
    slot_take: Script,
    /// Connection slots this node holds (set, holder): renewed in the
    /// background.
    held_slots: std::sync::Mutex<HashSet<(String, String)>>,
    /// Entries this node holds leases on, with the lease length last asked
    /// for; renewed in the background so that an attempt that waits or runs
    /// longer than one lease is not taken over by another node.
    held: std::sync::Mutex<HashSet<String>>,
    lease_ms: std::sync::atomic::AtomicI64,
    /// Units of `take` counters counted in Redis ahead of use.
    reserved: Reservations,
    /// Answers for batches that accept them of bounded age.
    reads: ReadCache,
    /// Replicas that must have a new message before it is acknowledged,
    /// and how long to wait for them (ms).
    wait_replicas: std::sync::atomic::AtomicU32,
    wait_timeout_ms: std::sync::atomic::AtomicU64,
}

impl RedisStore {
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub async fn connect(
        url: &str,
        prefix: &str,
        retention: Duration,
        clock: Clock,
    ) -> Result<Arc<RedisStore>> {
        Self::connect_to(&RedisTarget::Url(url.to_string()), prefix, retention, clock).await
    }

    /// The store on the Redis `target` names (one server, or a master
    /// Sentinel names).
    pub async fn connect_to(
        target: &RedisTarget,
        prefix: &str,
        retention: Duration,
        clock: Clock,
    ) -> Result<Arc<RedisStore>> {
        // The client's default of 0.5 s is short for a Redis that syncs
        // every write (`appendfsync always`, as README recommends) on a
        // busy disk: a slow answer is waited for, not taken for an outage.
        let conn = conn::Conn::open(target, RESPONSE_TIMEOUT).await?;
        let store = Arc::new(RedisStore {
            conn,
            prefix: prefix.to_string(),
            retention,
            enqueue: Script::new(ENQUEUE),
            lease: Script::new(LEASE),
            settle: Script::new(SETTLE),
            release: Script::new(RELEASE),
            incr: Script::new(INCR),
            renew: Script::new(RENEW),
            pace: Script::new(PACE),
            slot_take: Script::new(SLOT_TAKE),
            held_slots: std::sync::Mutex::new(HashSet::new()),
            held: std::sync::Mutex::new(HashSet::new()),
            lease_ms: std::sync::atomic::AtomicI64::new(0),
            reserved: Reservations::default(),
            reads: ReadCache::default(),
            wait_replicas: std::sync::atomic::AtomicU32::new(0),
            wait_timeout_ms: std::sync::atomic::AtomicU64::new(1000),
            clock,
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut sweeps = 0u32;
            loop {
                tokio::time::sleep(COUNTER_SWEEP).await;
                let Some(store) = weak.upgrade() else { break };
                let due = store.reserved.due(Instant::now(), IDLE_RETURN);
                if let Err(e) = store.give_back(&due).await {
                    tracing::warn!(error = %e, units = due.len(), "returning reserved counter units failed");
                }
                sweeps = sweeps.wrapping_add(1);
                if sweeps.is_multiple_of(40) {
                    store.reads.sweep(Instant::now());
                }
            }
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                let lease_ms = match weak.upgrade() {
                    Some(s) => s.lease_ms.load(Ordering::Relaxed),
                    None => break,
                };
                // Renew at a third of the lease, so two renewals can fail
                // before another node may take an entry over.
                let every = Duration::from_millis((lease_ms / 3).max(500) as u64);
                tokio::time::sleep(every).await;
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = store.renew_leases().await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            // Three renewals per deadline: two may fail.
            let every = crate::store::shaping::SLOT_TTL / 3;
            loop {
                tokio::time::sleep(every).await;
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = store.renew_slots().await {
                    tracing::warn!(error = %e, "connection slot renewal failed");
                }
            }
        });
        Ok(store)
    }

    /// Gives back every reserved unit: for a node that stops.
    pub async fn close(&self) {
        let all = self.reserved.all(Instant::now());
        if let Err(e) = self.give_back(&all).await {
            tracing::warn!(error = %e, "returning reserved counter units at shutdown failed");
        }
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks that `replicas` Redis replicas have each new message before it
    /// is acknowledged, waiting at most `timeout`.
    pub fn set_wait_replicas(&self, replicas: u32, timeout: Duration) {
        self.wait_replicas.store(replicas, Ordering::Relaxed);
        self.wait_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Waits until the replicas asked for have what this node wrote
    /// (`WAIT`); an error when fewer have it in time.
    pub(super) async fn replicated(&self) -> Result<()> {
        let wanted = self.wait_replicas.load(Ordering::Relaxed);
        if wanted == 0 {
            return Ok(());
        }
        let got: i64 = redis::cmd("WAIT")
            .arg(wanted)
            .arg(self.wait_timeout_ms.load(Ordering::Relaxed))
            .query_async(&mut self.conn.clone())
            .await?;
        if got < i64::from(wanted) {
            return Err(StoreError::NotReplicated { wanted, got });
        }
        Ok(())
    }

    /// Queue entries this node holds leases on now.
    pub fn leases_held(&self) -> usize {
        self.held().len()
    }

    /// `INFO server` and `INFO replication`: the version, the role, the
    /// replicas connected, as (field, value).
    pub async fn server_info(&self) -> Result<Vec<(String, String)>> {
        const FIELDS: &[&str] = &[
            "redis_version",
            "role",
            "connected_slaves",
            "master_host",
            "master_port",
            "master_link_status",
        ];
        let mut out = Vec::new();
        for section in ["server", "replication"] {
            let text: String = redis::cmd("INFO")
                .arg(section)
                .query_async(&mut self.conn.clone())
                .await?;
            out.extend(text.lines().filter_map(|l| {
                let (k, v) = l.trim().split_once(':')?;
                FIELDS.contains(&k).then(|| (k.to_string(), v.to_string()))
            }));
        }
        Ok(out)
    }

    pub(super) fn q(&self, name: &str) -> String {
        format!("{{{}}}:q:{name}", self.prefix)
    }

    pub(super) fn body_key(&self, msg_id: &str) -> String {
        format!("{{{}}}:body:{msg_id}", self.prefix)
    }

    pub(super) fn status_key(&self, msg_id: &str) -> String {
        format!("{{{}}}:status:{msg_id}", self.prefix)
    }

    pub(super) fn kv_key(&self, key: &str) -> String {
        format!("{}:kv:{key}", self.prefix)
    }

    pub(super) fn set_key(&self, set: &str) -> String {
        format!("{}:set:{set}", self.prefix)
    }
}
