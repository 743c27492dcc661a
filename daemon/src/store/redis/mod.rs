//! Redis store: shared by every node of a cluster.
//!
//! The queue is split into shards, each under its own hash tag, a message
//! and its recipients' entries in one (chosen from the message id): every
//! multi-key step is one server-side script on one shard, atomic and one
//! round trip, and on a Redis Cluster the shards spread over the masters.
//! A node leases from every shard in turn. One shard (under `{prefix}`) on
//! one server or Sentinel's master, so a store made before shards keeps
//! its keys; `DEFAULT_CLUSTER_SHARDS` on a cluster. The count is fixed in
//! Redis by the first node (`{prefix}:q:shards`). Counters, sets and
//! shaping keys hash on their own. Redis is one server, a cluster, or the
//! master Sentinel names (`conn`).
//! Leases are a sorted set scored by their deadline: a node that dies simply
//! stops settling, and the next `lease` call of any node moves the expired
//! entries back to the ready set.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the store's parts, its keys, connecting |
//! | `conn.rs` | one server, a cluster, or the master Sentinel names, followed across failovers |
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
/// How often a lease asks every shard while this node's own new mail
/// names the shards to ask (work other nodes queued, retries come due).
const FULL_LEASE_EVERY: Duration = Duration::from_millis(50);
/// How often a node on a Redis Cluster looks at who its masters are.
const TOPOLOGY_WATCH: Duration = Duration::from_secs(1);
/// Queue shards on a Redis Cluster unless `store.redis_queue_shards` says:
/// as many on each master of 1, 2, 3, 4, 6 or 8.
pub const DEFAULT_CLUSTER_SHARDS: u16 = 24;
/// How long a command is tried through a failover unless
/// `store.redis_failover_timeout_ms` says otherwise.
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Each queue shard's hash tag (`{...}`), by shard.
    shards: Vec<String>,
    /// The shard the next lease of every shard starts at.
    next_shard: std::sync::atomic::AtomicUsize,
    /// Shards this node queued to since a lease last asked them, and when
    /// a lease last asked every shard: a lease asks the first alone while
    /// there are some, the second every `FULL_LEASE_EVERY`.
    hinted: std::sync::Mutex<std::collections::BTreeSet<usize>>,
    last_full_lease: std::sync::Mutex<Instant>,
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
        Self::connect_to(
            &RedisTarget::Url(url.to_string()),
            prefix,
            0,
            DEFAULT_FAILOVER_TIMEOUT,
            retention,
            clock,
        )
        .await
    }

    /// The store on the Redis `target` names (one server, a cluster, or a
    /// master Sentinel names), its queue in `shards` shards unless Redis
    /// has a count already (0: one, or `DEFAULT_CLUSTER_SHARDS` on a
    /// cluster). A command is tried through a failover for `failover`.
    pub async fn connect_to(
        target: &RedisTarget,
        prefix: &str,
        shards: u16,
        failover: Duration,
        retention: Duration,
        clock: Clock,
    ) -> Result<Arc<RedisStore>> {
        // The client's default of 0.5 s is short for a Redis that syncs
        // every write (`appendfsync always`, as README recommends) on a
        // busy disk: a slow answer is waited for, not taken for an outage.
        let conn = conn::Conn::open(target, RESPONSE_TIMEOUT, failover).await?;
        if conn.is_cluster() {
            cluster_serves_every_slot(&conn).await?;
        }
        let wanted = match shards {
            0 if conn.is_cluster() => DEFAULT_CLUSTER_SHARDS,
            0 => 1,
            n => n,
        };
        let count = shard_count(&conn, prefix, wanted).await?;
        let store = Arc::new(RedisStore {
            conn,
            shards: shard_tags(prefix, count),
            next_shard: std::sync::atomic::AtomicUsize::new(0),
            hinted: std::sync::Mutex::new(Default::default()),
            last_full_lease: std::sync::Mutex::new(Instant::now()),
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
        if store.conn.is_cluster() {
            let weak = Arc::downgrade(&store);
            tokio::spawn(async move {
                let mut masters: Option<Vec<String>> = None;
                let mut known: Vec<String> = Vec::new();
                loop {
                    tokio::time::sleep(TOPOLOGY_WATCH).await;
                    let Some(store) = weak.upgrade() else { break };
                    let Some((now, nodes)) = store.cluster_masters(&known).await else {
                        continue;
                    };
                    known = nodes;
                    if let Some(before) = masters.as_ref().filter(|b| **b != now) {
                        // One warning per change of masters, not one per
                        // command the change delayed; a failover is a new
                        // master.
                        tracing::warn!(before = ?before, now = ?now, "the Redis Cluster's masters changed");
                        if now.iter().any(|m| !before.contains(m))
                            && let Some(m) = crate::metrics::get()
                        {
                            m.store_failovers.inc();
                        }
                    }
                    masters = Some(now);
                }
            });
        }
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

    /// Waits until the replicas asked for have what this node wrote to the
    /// server that holds `key` (`WAIT`); an error when fewer have it in
    /// time.
    pub(super) async fn replicated(&self, key: &str) -> Result<()> {
        let wanted = self.wait_replicas.load(Ordering::Relaxed);
        if wanted == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted)
            .arg(self.wait_timeout_ms.load(Ordering::Relaxed));
        let got: i64 = self.conn.to_master_of(key, wait).await?;
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
    /// replicas connected, as (field, value); of a cluster, its state and
    /// each master's slots, replicas and keys.
    pub async fn server_info(&self) -> Result<Vec<(String, String)>> {
        if self.conn.is_cluster() {
            return self.cluster_info().await;
        }
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
            out.extend(info_fields(&text, FIELDS));
        }
        Ok(out)
    }

    /// The addresses of the cluster's masters that are not failed, in
    /// order, and of every node, as the first of `known` (node addresses)
    /// to answer within half a second sees them: a node that died is not
    /// waited for through the client's retries.
    async fn cluster_masters(&self, known: &[String]) -> Option<(Vec<String>, Vec<String>)> {
        const ASK_FOR: Duration = Duration::from_millis(500);
        let ask = |addr: Option<&String>| {
            let conn = self.conn.clone();
            let addr = addr.cloned();
            async move {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("NODES");
                match addr.as_deref() {
                    Some(a) => {
                        let (host, port) = host_port(a)?;
                        conn.to_node::<String>(host, port, cmd).await.ok()
                    }
                    None => cmd.query_async::<String>(&mut conn.clone()).await.ok(),
                }
            }
        };
        let mut text = None;
        for addr in known.iter().map(Some).chain([None]) {
            if let Ok(Some(t)) = tokio::time::timeout(ASK_FOR, ask(addr)).await {
                text = Some(t);
                break;
            }
        }
        let text = text?;
        let nodes = cluster_nodes(&text);
        let mut masters: Vec<String> = nodes
            .iter()
            .filter(|n| n.is_live_master())
            .map(|n| n.addr.to_string())
            .collect();
        masters.sort();
        Some((masters, nodes.iter().map(|n| n.addr.to_string()).collect()))
    }

    async fn cluster_info(&self) -> Result<Vec<(String, String)>> {
        const FIELDS: &[&str] = &[
            "cluster_state",
            "cluster_slots_assigned",
            "cluster_slots_ok",
            "cluster_known_nodes",
            "cluster_size",
        ];
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut self.conn.clone())
            .await?;
        let mut out = info_fields(&info, FIELDS);
        out.push(("queue_shards".into(), self.shard_count().to_string()));
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut self.conn.clone())
            .await?;
        let nodes = cluster_nodes(&nodes);
        for m in nodes.iter().filter(|n| n.master) {
            let replicas = nodes.iter().filter(|r| r.master_id == m.id).count();
            let keys = match host_port(m.addr) {
                Some((host, port)) if !m.failed => self
                    .conn
                    .to_node::<u64>(host, port, redis::cmd("DBSIZE"))
                    .await
                    .map_or_else(|e| format!("keys unknown ({e})"), |n| format!("{n} keys")),
                _ => "failed".into(),
            };
            out.push((
                format!("master {}", m.addr),
                format!(
                    "slots {}, {replicas} replica(s), {keys}",
                    if m.slots.is_empty() {
                        "none".into()
                    } else {
                        m.slots.join(" ")
                    }
                ),
            ));
        }
        Ok(out)
    }

    /// The queue's shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard a message's keys are in.
    pub(super) fn shard_of(&self, msg_id: &str) -> usize {
        crc32fast::hash(msg_id.as_bytes()) as usize % self.shards.len()
    }

    /// The shard a queue entry (`msg_id/idx`) is in.
    pub(super) fn shard_of_entry(&self, key: &str) -> usize {
        self.shard_of(key.rsplit_once('/').map_or(key, |(m, _)| m))
    }

    pub(super) fn q(&self, shard: usize, name: &str) -> String {
        format!("{}:q:{name}", self.shards[shard])
    }

    pub(super) fn body_key(&self, msg_id: &str) -> String {
        format!("{}:body:{msg_id}", self.shards[self.shard_of(msg_id)])
    }

    pub(super) fn status_key(&self, msg_id: &str) -> String {
        format!("{}:status:{msg_id}", self.shards[self.shard_of(msg_id)])
    }

    pub(super) fn kv_key(&self, key: &str) -> String {
        format!("{}:kv:{key}", self.prefix)
    }

    pub(super) fn set_key(&self, set: &str) -> String {
        format!("{}:set:{set}", self.prefix)
    }
}

/// An error that says why, unless every master says `cluster_state:ok`
/// (every slot served by a master that is up): a master that lost a slot
/// knows it before the others do.
async fn cluster_serves_every_slot(conn: &conn::Conn) -> Result<()> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn.clone())
        .await?;
    for m in cluster_nodes(&nodes).iter().filter(|n| n.is_live_master()) {
        let Some((host, port)) = host_port(m.addr) else {
            continue;
        };
        let addr = m.addr;
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("INFO");
        // A master that cannot be asked is waited for, as a cluster that
        // is down.
        let info: String = conn
            .to_node(host, port, cmd)
            .await
            .map_err(|e| StoreError::ClusterDown(format!("{addr} cannot be asked: {e}")))?;
        let field = |name: &str| info_field(&info, name).unwrap_or("?").to_string();
        if field("cluster_state") != "ok" {
            return Err(StoreError::ClusterDown(format!(
                "cluster_state:{} at {addr}, {} of 16384 slots assigned, {} served (every slot must be: `redis-cli --cluster check` names the missing ones)",
                field("cluster_state"),
                field("cluster_slots_assigned"),
                field("cluster_slots_ok")
            )));
        }
    }
    Ok(())
}

/// A node of a Redis Cluster as a line of `CLUSTER NODES` gives it.
struct ClusterNode<'a> {
    id: &'a str,
    /// `host:port` (without the bus port).
    addr: &'a str,
    master: bool,
    /// Marked failing (`fail` or `fail?`).
    failed: bool,
    /// A replica's master's id (`-` for a master).
    master_id: &'a str,
    /// A master's slot ranges.
    slots: Vec<&'a str>,
}

impl ClusterNode<'_> {
    fn is_live_master(&self) -> bool {
        self.master && !self.failed
    }
}

fn cluster_nodes(text: &str) -> Vec<ClusterNode<'_>> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            Some(ClusterNode {
                id: f[0],
                addr: f[1].split(['@', ',']).next().unwrap_or(f[1]),
                master: f[2].contains("master"),
                failed: f[2].contains("fail"),
                master_id: f[3],
                slots: f[8..].to_vec(),
            })
        })
        .collect()
}

/// `host:port` as a host and a port.
fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// The value of `name:value` in an `INFO` or `CLUSTER INFO` answer.
fn info_field<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
}

/// The `name:value` lines of an `INFO` answer whose names are in `names`.
fn info_fields(text: &str, names: &[&str]) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            names.contains(&k).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The store's shard count: the one in Redis, else `wanted`, written there
/// for every node after this one.
async fn shard_count(conn: &conn::Conn, prefix: &str, wanted: u16) -> Result<u16> {
    let key = format!("{{{prefix}}}:q:shards");
    let mut conn = conn.clone();
    let _: bool = conn.set_nx(&key, wanted).await?;
    let stored: Option<String> = conn.get(&key).await?;
    let count = stored
        .as_deref()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| StoreError::Corrupt {
            key: key.clone(),
            reason: format!("{stored:?} is not a shard count"),
        })?;
    if count != wanted {
        tracing::warn!(
            stored = count,
            asked = wanted,
            "the queue keeps the shard count it was made with"
        );
    }
    Ok(count)
}

/// Each shard's hash tag: `{prefix}` alone for one shard (the layout of a
/// store made before shards); else tags whose slots are the middles of
/// `count` equal parts of the cluster's 16384, so that masters holding
/// equal slot ranges (as `redis-cli --cluster create` makes them) hold
/// equal numbers of shards.
fn shard_tags(prefix: &str, count: u16) -> Vec<String> {
    if count <= 1 {
        return vec![format!("{{{prefix}}}")];
    }
    let part = 16384.0 / f64::from(count);
    (0..count)
        .map(|shard| {
            let middle = (f64::from(shard) * part + part / 2.0) as i32;
            let near = |tag: &str| {
                (i32::from(conn::slot_of(tag.as_bytes())) - middle).abs() <= (part / 8.0) as i32
            };
            (0u32..)
                .map(|k| format!("{prefix}:q{shard}.{k}"))
                .find(|t| near(t))
                .map(|t| format!("{{{t}}}"))
                .unwrap_or_default()
        })
        .collect()
}
