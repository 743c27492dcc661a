//! The one store interface, with two backends.
//!
//! Everything that must survive a restart or be shared between nodes goes
//! through [`Store`]: the message queue (bodies, per-recipient queue entries,
//! leases), delivery status records, counters with expiry, keys and sets with
//! a TTL. `embedded` is a single crash-safe redb file with group commit for
//! one node; `redis` is shared by the nodes of a cluster, every multi-key step
//! a server-side script.

pub mod embedded;
pub mod read_cache;
pub mod redis;
pub mod reservations;
pub mod shaping;
pub mod wal;

use crate::queued::{Disposition, MessageStatus, NewMessage, QueueEntry, RecipientStatus};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store is shutting down")]
    Closed,
    /// The embedded store's file could not be written; the node stops.
    #[error("embedded store cannot write its file: {0}")]
    StorageFailed(String),
    #[error("the store's disk has {free_mb} MB free, below the {reserve_mb} MB kept for the queue")]
    NoSpace { free_mb: u64, reserve_mb: u64 },
    /// Fewer Redis replicas than `store.redis_wait_replicas` have the write.
    #[error("{got} of the {wanted} Redis replicas asked for have the write")]
    NotReplicated { wanted: u32, got: i64 },
    /// The Redis Cluster does not serve every slot (`cluster_state:fail`).
    #[error("the Redis Cluster is down: {0}")]
    ClusterDown(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The store could not be reached (down, refusing, timing out): worth
    /// trying again, unlike a wrong URL or a corrupt record.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_connection_dropped()
            }
            // It may be converging, or an operator mending it.
            StoreError::ClusterDown(_) => true,
            _ => false,
        }
    }
}

/// `url` without its password, for logs.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redacted_url("rediss://kiln:s3cret@r.example:6380"),
            "rediss://kiln:***@r.example:6380"
        );
        assert_eq!(
            super::redacted_url("redis://127.0.0.1/"),
            "redis://127.0.0.1/"
        );
    }
}

/// A page of the queue, in key order: each entry with its state, and the
/// cursor of the next page (None after the last).
pub struct QueuePage {
    pub entries: Vec<(QueueEntry, EntryState)>,
    pub next: Option<String>,
}

/// Where a queue entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    Due,
    Waiting,
    Leased,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Due => "due",
            EntryState::Waiting => "waiting",
            EntryState::Leased => "leased",
        }
    }
}

/// Queue entries by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Due now, not taken yet.
    pub due: u64,
    /// Due later (a next try, a scheduled or parked entry).
    pub waiting: u64,
    /// Taken by a node for an attempt.
    pub leased: u64,
}

#[derive(Clone)]
pub enum Store {
    Embedded(Arc<embedded::EmbeddedStore>),
    Redis(Arc<redis::RedisStore>),
}

impl Store {
    /// Kiln's time, as every part that holds the store reads it.
    pub fn clock(&self) -> &crate::clock::Clock {
        match self {
            Store::Embedded(s) => s.clock(),
            Store::Redis(s) => s.clock(),
        }
    }

    /// Milliseconds since the epoch, by [`Store::clock`].
    pub fn now_ms(&self) -> i64 {
        self.clock().now_ms()
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
            Store::Redis(_) => "redis",
        }
    }

    /// Durable when it returns, with `also` in the same commit (the
    /// events of recipients dropped at intake): the caller may then
    /// acknowledge the message.
    pub async fn enqueue(&self, msg: &NewMessage, also: &[Write]) -> Result<()> {
        let started = std::time::Instant::now();
        let done = match self {
            Store::Embedded(s) => s.enqueue(msg, also).await,
            Store::Redis(s) => s.enqueue(msg, also).await,
        };
        self.count_write("enqueue", started);
        done
    }

    fn count_write(&self, op: &'static str, started: std::time::Instant) {
        if let Some(m) = crate::metrics::get() {
            crate::metrics::observe(
                &m.store_seconds.get_or_create(&crate::metrics::StoreOp {
                    store: self.backend_name(),
                    op,
                }),
                started.elapsed(),
            );
        }
    }

    /// Leases up to `max` entries whose time has come, for `lease` long.
    pub async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<QueueEntry>> {
        match self {
            Store::Embedded(s) => s.lease(max).await,
            Store::Redis(s) => s.lease(max, lease).await,
        }
    }

    /// Milliseconds until the next entry becomes ready (if known cheaply).
    pub async fn next_ready_ms(&self) -> Result<Option<i64>> {
        match self {
            Store::Embedded(s) => Ok(s.next_ready_ms()),
            Store::Redis(s) => s.next_ready_ms().await,
        }
    }

    pub async fn body(&self, msg_id: &str) -> Result<Option<Arc<[u8]>>> {
        match self {
            Store::Embedded(s) => s.body(msg_id).await,
            Store::Redis(s) => s.body(msg_id).await,
        }
    }

    /// Records an attempt's outcome, with `also` in the same commit (on
    /// Redis, the same MULTI): what must be durable exactly when the
    /// outcome is, such as the outcome's callback job.
    pub async fn settle(
        &self,
        entry: &QueueEntry,
        disposition: Disposition,
        also: &[Write],
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let done = match self {
            Store::Embedded(s) => s.settle(entry, disposition, also).await,
            Store::Redis(s) => s.settle(entry, disposition, also).await,
        };
        self.count_write("settle", started);
        done
    }

    /// Rewrites one recipient's status record (an outcome learnt after the
    /// fact, such as a returned DSN), with `also` in the same commit.
    pub async fn record_status(
        &self,
        msg_id: &str,
        idx: u32,
        status: &RecipientStatus,
        also: &[Write],
    ) -> Result<()> {
        match self {
            Store::Embedded(s) => s.record_status(msg_id, idx, status, also).await,
            Store::Redis(s) => s.record_status(msg_id, idx, status, also).await,
        }
    }

    /// Several key and set changes, all or none: one commit on the
    /// embedded store, one MULTI on Redis.
    pub async fn write(&self, writes: &[Write]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        match self {
            Store::Embedded(s) => s.write(writes).await,
            Store::Redis(s) => s.write(writes).await,
        }
    }

    /// Gives leased entries back (shutdown): other nodes may take them now.
    pub async fn release(&self, entries: &[QueueEntry]) -> Result<()> {
        match self {
            Store::Embedded(s) => {
                s.release(entries);
                Ok(())
            }
            Store::Redis(s) => s.release(entries).await,
        }
    }

    /// Gives leased entries back unattempted, each due at its
    /// `ready_at_ms` (a destination that cannot take them yet).
    pub async fn park(&self, entries: &[QueueEntry]) -> Result<()> {
        match self {
            Store::Embedded(s) => {
                s.park(entries);
                Ok(())
            }
            Store::Redis(s) => s.park(entries).await,
        }
    }

    pub async fn status(&self, msg_id: &str) -> Result<Option<MessageStatus>> {
        match self {
            Store::Embedded(s) => s.status(msg_id).await,
            Store::Redis(s) => s.status(msg_id).await,
        }
    }

    /// A page of at most about `limit` queue entries (all nodes), from
    /// `cursor` (None: the start). A scan that runs while the queue changes
    /// sees every entry that stays queued throughout, once.
    pub async fn scan_queue(&self, cursor: Option<&str>, limit: usize) -> Result<QueuePage> {
        match self {
            Store::Embedded(s) => s.scan_queue(cursor, limit),
            Store::Redis(s) => s.scan_queue(cursor, limit).await,
        }
    }

    /// Makes the entries of `keys` due now, those not being attempted;
    /// answers how many.
    pub async fn make_due(&self, keys: &[String]) -> Result<usize> {
        match self {
            Store::Embedded(s) => Ok(s.make_due(keys)),
            Store::Redis(s) => s.make_due(keys).await,
        }
    }

    /// Queue entries not yet final (all nodes), by state.
    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        match self {
            Store::Embedded(s) => Ok(s.queue_counts()),
            Store::Redis(s) => s.queue_counts().await,
        }
    }

    /// Number of queue entries not yet final (all nodes).
    pub async fn queue_len(&self) -> Result<u64> {
        match self {
            Store::Embedded(s) => Ok(s.queue_len()),
            Store::Redis(s) => s.queue_len().await,
        }
    }

    /// Adds `by` to a counter; the first increment of a window sets its expiry.
    pub async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        match self {
            Store::Embedded(s) => s.incr(key, by, ttl),
            Store::Redis(s) => s.incr(key, by, ttl).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Embedded(s) => s.get(key).await,
            Store::Redis(s) => s.get(key).await,
        }
    }

    /// Stores a value; `ttl` None keeps it until deleted.
    pub async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        match self {
            Store::Embedded(s) => s.put(key, value, ttl).await,
            Store::Redis(s) => s.put(key, value, ttl).await,
        }
    }

    /// Stores a value only if the key is absent; true when it was stored.
    pub async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
        match self {
            Store::Embedded(s) => s.put_if_absent(key, value).await,
            Store::Redis(s) => s.put_if_absent(key, value).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        match self {
            Store::Embedded(s) => s.delete(key).await,
            Store::Redis(s) => s.delete(key).await,
        }
    }

    pub async fn set_add(&self, set: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        match self {
            Store::Embedded(s) => s.set_add(set, member, ttl).await,
            Store::Redis(s) => s.set_add(set, member, ttl).await,
        }
    }

    pub async fn set_contains(&self, set: &str, member: &str) -> Result<bool> {
        match self {
            Store::Embedded(s) => s.set_contains(set, member).await,
            Store::Redis(s) => s.set_contains(set, member).await,
        }
    }

    pub async fn set_remove(&self, set: &str, member: &str) -> Result<bool> {
        match self {
            Store::Embedded(s) => s.set_remove(set, member).await,
            Store::Redis(s) => s.set_remove(set, member).await,
        }
    }

    pub async fn set_members(&self, set: &str) -> Result<Vec<String>> {
        match self {
            Store::Embedded(s) => s.set_members(set).await,
            Store::Redis(s) => s.set_members(set).await,
        }
    }

    /// Queue entries this node holds leases on now.
    pub fn leases_held(&self) -> usize {
        match self {
            Store::Embedded(s) => s.leases_held(),
            Store::Redis(s) => s.leases_held(),
        }
    }

    /// What the store's server says of itself (Redis: its version, role and
    /// connected replicas, from `INFO`); None for the embedded store.
    pub async fn server_info(&self) -> Result<Option<Vec<(String, String)>>> {
        match self {
            Store::Embedded(_) => Ok(None),
            Store::Redis(s) => s.server_info().await.map(Some),
        }
    }

    /// On Redis: how many counters have units this node counted ahead of
    /// use (`BatchOp::Take`), and how many units in all. They show in the
    /// counters' values until spent or given back.
    pub fn held_ahead(&self) -> Option<(usize, i64)> {
        match self {
            Store::Embedded(_) => None,
            Store::Redis(s) => Some(s.held_ahead()),
        }
    }

    /// Several independent reads and increments in one go: one round trip
    /// on Redis (a pipeline), one read transaction on the embedded store.
    pub async fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchValue>> {
        self.batch_within(ops, Duration::ZERO).await
    }

    /// A batch whose reads (`Get`, `Contains`) may be answered from what
    /// this node read at most `max_age` ago. On Redis that spares the round
    /// trip for keys read again and again (another node's write shows after
    /// `max_age` at most; this node's own writes at once); on the embedded
    /// store, the only copy, every write is this node's, so the answers
    /// stay exact except that a row may outlive its expiry by `max_age`.
    pub async fn batch_within(
        &self,
        ops: &[BatchOp],
        max_age: Duration,
    ) -> Result<Vec<BatchValue>> {
        match self {
            Store::Embedded(s) => s.batch(ops, max_age),
            Store::Redis(s) => s.batch(ops, max_age).await,
        }
    }
}

/// One change of a [`Store::write`], as `put`, `delete`, `set_add` and
/// `set_remove` make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put {
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    Delete(String),
    SetAdd {
        set: String,
        member: String,
        ttl: Option<Duration>,
    },
    SetRemove {
        set: String,
        member: String,
    },
}

#[derive(Debug, Clone)]
pub enum BatchOp {
    Get(String),
    Contains(String, String),
    Incr(String, i64, Duration),
    /// Counts `amount` against `limit` if the counter stays within it
    /// (answers true), else counts nothing (false). The counter expires
    /// `ttl` after it was made, as with `Incr`.
    Take {
        key: String,
        amount: i64,
        ttl: Duration,
        limit: i64,
        /// The most units a node may count ahead of use (Redis), which
        /// show in the counter's value until spent or given back: small
        /// for a counter whose value is read for something else.
        hold_at_most: i64,
    },
    /// Gives back `amount` taken earlier (the counter never goes below 0;
    /// a counter that is gone stays gone). Answers true.
    Give {
        key: String,
        amount: i64,
    },
}

/// `prefix` then `key`, into `buf` (cleared first). Stores make one of
/// these for every operation of every batch: no formatting machinery.
pub fn prefixed_into(buf: &mut String, prefix: &str, key: &str) {
    buf.clear();
    buf.reserve(prefix.len() + key.len());
    buf.push_str(prefix);
    buf.push_str(key);
}

/// [`prefixed_into`] a new String.
pub fn prefixed(prefix: &str, key: &str) -> String {
    let mut out = String::new();
    prefixed_into(&mut out, prefix, key);
    out
}

/// A [`BatchOp`] on borrowed keys, each under a prefix the store puts in
/// front (`kiln.batch` reads its operations straight out of the script's
/// tables: no copy of a key per operation).
#[derive(Debug, Clone, Copy)]
pub enum OpRef<'a> {
    Get(&'a str),
    Contains(&'a str, &'a str),
    Incr(&'a str, i64, Duration),
    Take {
        key: &'a str,
        amount: i64,
        ttl: Duration,
        limit: i64,
        hold_at_most: i64,
    },
    Give {
        key: &'a str,
        amount: i64,
    },
}

impl BatchOp {
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            BatchOp::Get(k) => OpRef::Get(k),
            BatchOp::Contains(s, m) => OpRef::Contains(s, m),
            BatchOp::Incr(k, by, ttl) => OpRef::Incr(k, *by, *ttl),
            BatchOp::Take {
                key,
                amount,
                ttl,
                limit,
                hold_at_most,
            } => OpRef::Take {
                key,
                amount: *amount,
                ttl: *ttl,
                limit: *limit,
                hold_at_most: *hold_at_most,
            },
            BatchOp::Give { key, amount } => OpRef::Give {
                key,
                amount: *amount,
            },
        }
    }

    /// The operation with `prefix` put in front of its key (or set name).
    pub fn from_ref(op: OpRef<'_>, prefix: &str) -> BatchOp {
        let key = |k: &str| prefixed(prefix, k);
        match op {
            OpRef::Get(k) => BatchOp::Get(key(k)),
            OpRef::Contains(s, m) => BatchOp::Contains(key(s), m.to_string()),
            OpRef::Incr(k, by, ttl) => BatchOp::Incr(key(k), by, ttl),
            OpRef::Take {
                key: k,
                amount,
                ttl,
                limit,
                hold_at_most,
            } => BatchOp::Take {
                key: key(k),
                amount,
                ttl,
                limit,
                hold_at_most,
            },
            OpRef::Give { key: k, amount } => BatchOp::Give {
                key: key(k),
                amount,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchValue {
    Bytes(Option<Vec<u8>>),
    Bool(bool),
    Int(i64),
}

/// Shrinks a table to twice its entries when it has room for four times
/// as many (and more than a few): a burst's room goes back, a table that
/// breathes is not reallocated on every sweep.
pub(crate) fn shrink_table<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    table: &mut std::collections::HashMap<K, V, S>,
) {
    if table.capacity() > 4 * table.len() + 64 {
        table.shrink_to(2 * table.len());
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
