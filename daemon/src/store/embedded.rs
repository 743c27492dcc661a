//! Embedded store: one redb file, for a single node.
//!
//! All writes go to one writer thread that folds whatever is waiting into a
//! single transaction and commits it with one fsync (group commit): many SMTP
//! sessions share the cost of a sync, and none is answered before its data is
//! on disk. The queue index (what is ready when, what is leased) lives in
//! memory and is rebuilt from the file at start, so leases cost no disk write:
//! after a crash every entry is simply ready again.

use super::read_cache::{Read, ReadCache};
use super::wal::{self, Change, TableId, Wal};
use super::{BatchOp, BatchValue, OpRef, prefixed_into};
use super::{
    Disposition, MessageMeta, MessageStatus, NewMessage, QueueEntry, RecipientStatus, Result,
    StoreError, Write, decode, encode,
};
use crate::net::now_ms;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long changes may live only in the write-ahead log before redb is
/// made durable; bounds the replay at start.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes of jobs folded into one group commit, at most.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
const QUEUE: TableDefinition<&str, &[u8]> = TableDefinition::new("queue");
const PENDING: TableDefinition<&str, u64> = TableDefinition::new("pending");
/// Values here carry an 8-byte expiry prefix (ms since epoch, 0 = never).
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("status");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Expiry index: 8-byte big-endian deadline, table tag, key.
const EXPIRES: TableDefinition<&[u8], ()> = TableDefinition::new("expires");

const TAG_STATUS: u8 = b's';
const TAG_KV: u8 = b'k';

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded(e.to_string())
}

#[derive(Default)]
struct QueueIndex {
    ready: BTreeSet<(i64, String)>,
    entries: HashMap<String, QueueEntry>,
    leased: HashSet<String>,
}

enum Op {
    Enqueue {
        msg_id: String,
        body: Arc<[u8]>,
        meta: Vec<u8>,
        entries: Vec<(String, Vec<u8>, Vec<u8>)>,
        /// Status rows of recipients that are final already (dropped).
        finals: Vec<(String, Vec<u8>)>,
    },
    Settle {
        key: String,
        msg_id: String,
        /// New queue record for a retry; None removes the entry.
        requeue: Option<Vec<u8>>,
        status: Vec<u8>,
    },
    Put {
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    },
    Delete {
        key: String,
    },
    /// Counter values to write: key, value, expiry (ms).
    Counters(Vec<(String, i64, i64)>),
    /// One recipient's status record, rewritten.
    Status {
        key: String,
        status: Vec<u8>,
    },
    /// Several changes in one commit (replies with the first one's outcome).
    Many(Vec<Op>),
    Sweep,
}

enum Outcome {
    Unit,
    Bool(bool),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome>>,
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The KV table as of the writer's last commit. Reads on every message
    /// (policy counters, blocklists) use it rather than open a read
    /// transaction of their own: that waits on redb's header lock, which
    /// the writer holds while it commits, and would block a tokio worker.
    kv: Arc<KvSnapshot>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    index: Mutex<QueueIndex>,
    retention: Duration,
    counters: Mutex<Counters>,
}

/// A counter lives in memory and reaches the file within a second (and at
/// a clean stop): rate and quota counters change on every message and need
/// no sync of their own. A crash loses at most the last second of counts.
struct Counter {
    value: i64,
    expires_at: i64,
    dirty: bool,
}

/// The counters in memory, by key.
type Counters = foldhash::HashMap<String, Counter>;

const COUNTER_FLUSH: Duration = Duration::from_secs(1);

type KvTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

/// The newest committed KV table; the writer replaces it after each commit,
/// before it tells anyone the commit happened, so a read never misses a
/// write that was acknowledged. `reads` keeps answers for batches that accept
/// them of bounded age; the writer drops those a commit changed, right after
/// the new table is in place.
struct KvSnapshot {
    table: std::sync::RwLock<Arc<KvTable>>,
    reads: ReadCache,
}

impl KvSnapshot {
    fn open(db: &Database) -> Result<KvSnapshot> {
        Ok(KvSnapshot {
            table: std::sync::RwLock::new(Arc::new(Self::read(db)?)),
            reads: ReadCache::default(),
        })
    }

    fn read(db: &Database) -> Result<KvTable> {
        db.begin_read().map_err(err)?.open_table(KV).map_err(err)
    }

    fn refresh(&self, db: &Database) {
        match Self::read(db) {
            Ok(table) => *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table),
            // Reads then see the previous commit until the next one works;
            // the writer reports the failure of the commit itself.
            Err(e) => tracing::error!(error = %e, "cannot read the committed KV table"),
        }
    }

    fn current(&self) -> Arc<KvTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Drops the kept answers that `ops`, just committed, may have changed.
    fn forget<'a>(&self, ops: impl IntoIterator<Item = &'a Op>) {
        let mut keys = Vec::new();
        let mut any = false;
        for op in ops {
            any |= !changed_keys(op, &mut keys);
        }
        if any {
            self.reads.clear();
        } else {
            for key in keys {
                self.reads.forget_key(key);
            }
        }
    }
}

/// The KV keys `op` writes, added to `keys`; false if it may write any (a
/// sweep of expired rows).
fn changed_keys<'a>(op: &'a Op, keys: &mut Vec<&'a str>) -> bool {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => keys.push(key),
        Op::Counters(rows) => keys.extend(rows.iter().map(|(k, ..)| k.as_str())),
        Op::Many(ops) => return ops.iter().all(|op| changed_keys(op, keys)),
        Op::Sweep => return false,
        Op::Enqueue { .. } | Op::Settle { .. } | Op::Status { .. } => {}
    }
    true
}

fn with_expiry(expires_at: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Splits an expiring value; None when it has expired.
fn live_value(raw: &[u8], now: i64) -> Option<&[u8]> {
    if raw.len() < 8 {
        return None;
    }
    let (exp, value) = raw.split_at(8);
    let exp = i64::from_be_bytes(exp.try_into().ok()?);
    (exp == 0 || exp > now).then_some(value)
}

fn expiry_key(expires_at: i64, tag: u8, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.push(tag);
    out.extend_from_slice(key.as_bytes());
    out
}

fn set_key(set: &str, member: &str) -> String {
    let mut key = String::with_capacity(set.len() + member.len() + 6);
    set_key_into(&mut key, set, member);
    key
}

/// `set_key` into a buffer: made for every `contains` of every message.
fn set_key_into(key: &mut String, set: &str, member: &str) {
    key.clear();
    key.push_str("\u{1}set\u{1}");
    key.push_str(set);
    key.push('\u{1}');
    key.push_str(member);
}

impl EmbeddedStore {
    pub fn open(path: &Path, retention: Duration) -> Result<Arc<EmbeddedStore>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Embedded(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Embedded(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(MESSAGES).map_err(err)?;
        txn.open_table(QUEUE).map_err(err)?;
        txn.open_table(PENDING).map_err(err)?;
        txn.open_table(STATUS).map_err(err)?;
        txn.open_table(KV).map_err(err)?;
        txn.open_table(EXPIRES).map_err(err)?;
        txn.commit().map_err(err)?;

        let wal_path = path.with_extension("wal");
        let (mut wal, changes) = Wal::open(&wal_path, wal::DEFAULT_SIZE).map_err(err)?;
        if !changes.is_empty() {
            tracing::info!(changes = changes.len(), "replaying the write-ahead log");
            let mut txn = db.begin_write().map_err(err)?;
            txn.set_durability(Durability::Immediate).map_err(err)?;
            {
                let mut tables = Tables::open(&txn)?;
                for change in changes {
                    tables.replay(change)?;
                }
            }
            txn.commit().map_err(err)?;
        }
        // Always start over, so no frame written before this start can ever
        // be mistaken for a new one.
        wal.start_over().map_err(err)?;

        let mut index = QueueIndex::default();
        {
            let read = db.begin_read().map_err(err)?;
            let queue = read.open_table(QUEUE).map_err(err)?;
            for row in queue.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let entry: QueueEntry = decode(k.value(), v.value())?;
                index
                    .ready
                    .insert((entry.ready_at_ms, k.value().to_string()));
                index.entries.insert(k.value().to_string(), entry);
            }
        }
        let db = Arc::new(db);
        let kv = Arc::new(KvSnapshot::open(&db)?);
        let (tx, rx) = mpsc::channel::<Job>();
        let (writer_db, writer_kv) = (db.clone(), kv.clone());
        std::thread::Builder::new()
            .name("kiln-store-writer".into())
            .spawn(move || writer_loop(&writer_db, &writer_kv, wal, rx))
            .map_err(err)?;
        let store = Arc::new(EmbeddedStore {
            db,
            kv,
            writer: Mutex::new(Some(tx)),
            index: Mutex::new(index),
            retention,
            counters: Mutex::new(Counters::default()),
        });
        let flusher = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(COUNTER_FLUSH).await;
                let Some(store) = flusher.upgrade() else {
                    break;
                };
                let dirty = store.take_dirty_counters();
                if !dirty.is_empty()
                    && let Err(e) = store.submit(Op::Counters(dirty)).await
                {
                    tracing::warn!(error = %e, "writing counters failed");
                }
            }
        });
        let sweeper = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(store) = sweeper.upgrade() else {
                    break;
                };
                if let Err(e) = store.submit(Op::Sweep).await {
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
        });
        Ok(store)
    }

    /// Stops the writer after it has committed what it holds, counters
    /// included.
    pub fn close(&self) {
        let dirty = self.take_dirty_counters();
        if let Ok(mut w) = self.writer.lock() {
            if let Some(tx) = w.as_ref()
                && !dirty.is_empty()
            {
                let (reply, _) = oneshot::channel();
                let _ = tx.send(Job {
                    op: Op::Counters(dirty),
                    reply,
                });
            }
            w.take();
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dirty counters to persist; expired ones are forgotten.
    fn take_dirty_counters(&self) -> Vec<(String, i64, i64)> {
        let now = now_ms();
        let mut counters = self.counters();
        counters.retain(|_, c| c.expires_at > now);
        counters
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|(k, c)| {
                c.dirty = false;
                (k.clone(), c.value, c.expires_at)
            })
            .collect()
    }

    async fn submit(&self, op: Op) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        {
            let writer = self.writer.lock().map_err(|_| StoreError::Closed)?;
            let writer = writer.as_ref().ok_or(StoreError::Closed)?;
            writer
                .send(Job { op, reply })
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn index(&self) -> std::sync::MutexGuard<'_, QueueIndex> {
        // A panic while holding the lock cannot leave the index half-updated
        // in a way that matters more than losing the process; recover it.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status_expiry(&self) -> i64 {
        now_ms() + self.retention.as_millis() as i64
    }

    pub async fn enqueue(&self, msg: &NewMessage) -> Result<()> {
        let exp = self.status_expiry();
        let entries: Vec<QueueEntry> = msg.entries().collect();
        let rows = entries
            .iter()
            .map(|e| {
                (
                    e.key(),
                    encode(e),
                    with_expiry(exp, &encode(&msg.initial_status(&e.recipient))),
                )
            })
            .collect();
        let finals = msg
            .dropped_statuses()
            .map(|(i, st)| (super::entry_key(&msg.id, i), with_expiry(exp, &encode(&st))))
            .collect();
        self.submit(Op::Enqueue {
            msg_id: msg.id.clone(),
            body: msg.body.clone(),
            meta: with_expiry(exp, &encode(&msg.meta())),
            entries: rows,
            finals,
        })
        .await?;
        let mut index = self.index();
        for e in entries {
            let key = e.key();
            index.ready.insert((e.ready_at_ms, key.clone()));
            index.entries.insert(key, e);
        }
        Ok(())
    }

    pub async fn lease(&self, max: usize) -> Result<Vec<QueueEntry>> {
        let now = now_ms();
        let mut index = self.index();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(first) = index.ready.first() else {
                break;
            };
            if first.0 > now {
                break;
            }
            let Some((_, key)) = index.ready.pop_first() else {
                break;
            };
            if let Some(entry) = index.entries.get(&key).cloned() {
                index.leased.insert(key);
                out.push(entry);
            }
        }
        Ok(out)
    }

    pub fn next_ready_ms(&self) -> Option<i64> {
        self.index().ready.first().map(|(t, _)| *t)
    }

    pub fn queue_len(&self) -> u64 {
        self.index().entries.len() as u64
    }

    pub fn release(&self, entries: &[QueueEntry]) {
        let mut index = self.index();
        for e in entries {
            let key = e.key();
            if index.leased.remove(&key) {
                let ready = index
                    .entries
                    .get(&key)
                    .map(|e| e.ready_at_ms)
                    .unwrap_or(e.ready_at_ms);
                index.ready.insert((ready, key));
            }
        }
    }

    /// Gives leased entries back, each due at its `ready_at_ms`. Only the
    /// index changes: after a restart the entries are due at once.
    pub fn park(&self, entries: &[QueueEntry]) {
        let mut index = self.index();
        for e in entries {
            let key = e.key();
            if index.leased.remove(&key) {
                index.ready.insert((e.ready_at_ms, key));
            }
        }
    }

    pub async fn body(&self, msg_id: &str) -> Result<Option<Arc<[u8]>>> {
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(MESSAGES).map_err(err)?;
        Ok(table
            .get(msg_id)
            .map_err(err)?
            .map(|v| Arc::from(v.value())))
    }

    pub async fn settle(
        &self,
        entry: &QueueEntry,
        disposition: Disposition,
        also: &[Write],
    ) -> Result<()> {
        let exp = self.status_expiry();
        let key = entry.key();
        let (requeue, status, retry_entry) = match &disposition {
            Disposition::Final(status) => (None, status, None),
            Disposition::Retry(next, status) => (Some(encode(next)), status, Some(next.clone())),
        };
        let settle = Op::Settle {
            key: key.clone(),
            msg_id: entry.msg_id.clone(),
            requeue,
            status: with_expiry(exp, &encode(status)),
        };
        if also.is_empty() {
            self.submit(settle).await?;
        } else {
            let mut ops = vec![settle];
            ops.extend(self.write_ops(also));
            self.submit(Op::Many(ops)).await?;
        }
        let mut index = self.index();
        index.leased.remove(&key);
        match retry_entry {
            Some(next) => {
                index.ready.insert((next.ready_at_ms, key.clone()));
                index.entries.insert(key, next);
            }
            None => {
                index.entries.remove(&key);
            }
        }
        Ok(())
    }

    pub async fn status(&self, msg_id: &str) -> Result<Option<MessageStatus>> {
        let now = now_ms();
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(STATUS).map_err(err)?;
        let Some(meta_raw) = table.get(msg_id).map_err(err)? else {
            return Ok(None);
        };
        let Some(meta_bytes) = live_value(meta_raw.value(), now) else {
            return Ok(None);
        };
        let meta: MessageMeta = decode(msg_id, meta_bytes)?;
        let mut recipients: Vec<(u32, RecipientStatus)> = Vec::new();
        let start = format!("{msg_id}/");
        let end = format!("{msg_id}0"); // '0' sorts right after '/'
        for row in table.range(start.as_str()..end.as_str()).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let idx = k
                .value()
                .rsplit_once('/')
                .and_then(|(_, i)| i.parse::<u32>().ok())
                .unwrap_or(u32::MAX);
            if let Some(bytes) = live_value(v.value(), now) {
                recipients.push((idx, decode(k.value(), bytes)?));
            }
        }
        recipients.sort_by_key(|(i, _)| *i);
        Ok(Some(MessageStatus {
            meta,
            recipients: recipients.into_iter().map(|(_, r)| r).collect(),
        }))
    }

    /// Counts in memory (persisted every second): never waits, so policy
    /// scripts may call it without an await.
    pub fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        self.incr_in(&mut self.counters(), now_ms(), key, by, ttl)
    }

    /// Counts `amount` against `limit` if the count stays within it.
    pub fn take(&self, key: &str, amount: i64, ttl: Duration, limit: i64) -> Result<bool> {
        self.take_in(&mut self.counters(), now_ms(), key, amount, ttl, limit)
    }

    /// Gives back `amount` taken earlier; a counter that is gone stays gone.
    pub fn give(&self, key: &str, amount: i64) -> Result<()> {
        self.give_in(&mut self.counters(), now_ms(), key, amount)
    }

    // `incr`, `take` and `give` under a lock of the counters already held
    // (a batch takes it once for all its operations).

    fn incr_in(
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

    fn take_in(
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

    fn give_in(&self, counters: &mut Counters, now: i64, key: &str, amount: i64) -> Result<()> {
        self.with_counter(counters, now, key, None, |v| {
            *v = v.saturating_sub(amount).max(0)
        })
        .map(|_| ())
    }

    /// Applies `change` to a live counter, or to a new one starting at 0
    /// that expires after `ttl` (None: no new counter, nothing happens).
    fn with_counter<T>(
        &self,
        counters: &mut Counters,
        now: i64,
        key: &str,
        ttl: Option<Duration>,
        change: impl FnOnce(&mut i64) -> T,
    ) -> Result<Option<T>> {
        if let Some(c) = counters.get_mut(key).filter(|c| c.expires_at > now) {
            c.dirty = true;
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
            });
        c.dirty = true;
        Ok(Some(change(&mut c.value)))
    }

    /// A live KV row and its expiry (0 = never; counters always expire).
    fn stored_kv(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let table = self.kv.current();
        let Some(v) = table.get(key).map_err(err)? else {
            return Ok(None);
        };
        let raw = v.value();
        let exp = raw
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .unwrap_or(0);
        Ok(live_value(raw, now_ms()).map(|b| (b.to_vec(), exp)))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let now = now_ms();
        if let Some(c) = self.counters().get(key).filter(|c| c.expires_at > now) {
            return Ok(Some(c.value.to_string().into_bytes()));
        }
        let value = self.kv.current().get(key).map_err(err)?;
        Ok(value.and_then(|v| live_value(v.value(), now).map(|b| b.to_vec())))
    }

    pub async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.submit(Op::Put {
            key: key.to_string(),
            value: value.to_vec(),
            ttl,
            only_if_absent: false,
        })
        .await
        .map(|_| ())
    }

    pub async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
        match self
            .submit(Op::Put {
                key: key.to_string(),
                value: value.to_vec(),
                ttl: None,
                only_if_absent: true,
            })
            .await?
        {
            Outcome::Bool(b) => Ok(b),
            _ => Err(err("unexpected writer reply")),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let was_counter = self
            .counters()
            .remove(key)
            .is_some_and(|c| c.expires_at > now_ms());
        match self
            .submit(Op::Delete {
                key: key.to_string(),
            })
            .await?
        {
            Outcome::Bool(b) => Ok(b || was_counter),
            _ => Err(err("unexpected writer reply")),
        }
    }

    /// Several reads and increments, every read from one committed state.
    /// Never waits on the writer, like [`Self::incr`]. With a `max_age`,
    /// reads may come from answers kept at most that long (see
    /// [`Store::batch_within`](super::Store::batch_within)): a row already
    /// read costs a hash lookup instead of a walk down the table.
    pub fn batch(&self, ops: &[BatchOp], max_age: Duration) -> Result<Vec<BatchValue>> {
        self.batch_refs(ops.iter().map(BatchOp::as_ref), "", max_age)
    }

    /// [`Self::batch`] on borrowed operations whose keys and set names go
    /// under `prefix`.
    pub fn batch_refs<'a>(
        &self,
        ops: impl ExactSizeIterator<Item = OpRef<'a>>,
        prefix: &str,
        max_age: Duration,
    ) -> Result<Vec<BatchValue>> {
        let now = now_ms();
        let full = |buf: &mut String, k: &str| prefixed_into(buf, prefix, k);
        // First the counters, in order, under one lock of them; a `get`
        // of a key that is no live counter is read with the rest. Every
        // message's batch touches the same few counters from every core:
        // one lock per batch, not per operation.
        let mut out: Vec<Option<BatchValue>> = Vec::with_capacity(ops.len());
        let mut reads: Vec<(usize, String, Option<&'a str>)> = Vec::new();
        let mut key = String::new();
        {
            let mut counters = self.counters();
            let counters = &mut *counters;
            for (i, op) in ops.enumerate() {
                let answer = match op {
                    OpRef::Get(k) => {
                        full(&mut key, k);
                        match counters.get(key.as_str()).filter(|c| c.expires_at > now) {
                            Some(c) => Some(BatchValue::Bytes(Some(
                                itoa::Buffer::new().format(c.value).as_bytes().to_vec(),
                            ))),
                            None => {
                                reads.push((i, key.clone(), None));
                                None
                            }
                        }
                    }
                    OpRef::Contains(set, member) => {
                        full(&mut key, set);
                        reads.push((i, key.clone(), Some(member)));
                        None
                    }
                    OpRef::Incr(k, by, ttl) => {
                        full(&mut key, k);
                        Some(BatchValue::Int(self.incr_in(counters, now, &key, by, ttl)?))
                    }
                    OpRef::Take {
                        key: k,
                        amount,
                        ttl,
                        limit,
                        ..
                    } => {
                        full(&mut key, k);
                        Some(BatchValue::Bool(
                            self.take_in(counters, now, &key, amount, ttl, limit)?,
                        ))
                    }
                    OpRef::Give { key: k, amount } => {
                        full(&mut key, k);
                        self.give_in(counters, now, &key, amount)?;
                        Some(BatchValue::Bool(true))
                    }
                };
                out.push(answer);
            }
        }
        if !reads.is_empty() {
            for (i, value) in self.read_rows(&reads, now, max_age)? {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(value);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.unwrap_or(BatchValue::Bytes(None)))
            .collect())
    }

    /// The rows of a batch's reads from one committed state: `(index, key,
    /// None)` is a key's value, `(index, set, Some(member))` whether the
    /// set holds the member. With a `max_age`, from answers kept at most
    /// that long where there are some (one lock of them for all).
    fn read_rows(
        &self,
        reads: &[(usize, String, Option<&str>)],
        now: i64,
        max_age: Duration,
    ) -> Result<Vec<(usize, BatchValue)>> {
        let at = Instant::now();
        let row_key = |buf: &mut String, name: &str, member: Option<&str>| {
            match member {
                Some(m) => set_key_into(buf, name, m),
                None => {
                    buf.clear();
                    buf.push_str(name);
                }
            };
        };
        let mut kept = (!max_age.is_zero()).then(|| self.kv.reads.entries());
        let mut buf = String::new();
        let mut out = Vec::with_capacity(reads.len());
        let mut missed = Vec::new();
        if let Some(entries) = kept.as_ref() {
            for (i, name, member) in reads {
                row_key(&mut buf, name, *member);
                let hit = match member {
                    Some(_) => entries.key_present(&buf, max_age, at).map(BatchValue::Bool),
                    None => entries.key(&buf, max_age, at),
                };
                match hit {
                    Some(v) => out.push((*i, v)),
                    None => missed.push((*i, name, *member)),
                }
            }
        } else {
            missed.extend(reads.iter().map(|(i, name, member)| (*i, name, *member)));
        }
        if missed.is_empty() {
            // Every answer was kept: no table snapshot to take (the writer
            // replaces it after every commit).
            return Ok(out);
        }
        // Taken before the table: see `ReadCache::put` (read from the held
        // lock, so no forget comes between).
        let generation = match kept.as_ref() {
            Some(entries) => entries.generation(),
            None => self.kv.reads.generation(),
        };
        let table = self.kv.current();
        for (i, name, member) in missed {
            row_key(&mut buf, name, member);
            let value = table
                .get(buf.as_str())
                .map_err(err)?
                .and_then(|v| live_value(v.value(), now).map(|b| b.to_vec()));
            if let Some(entries) = kept.as_mut() {
                entries.put(
                    Read::Key(buf.clone()),
                    &BatchValue::Bytes(value.clone()),
                    at,
                    generation,
                );
            }
            out.push((
                i,
                match member {
                    Some(_) => BatchValue::Bool(value.is_some()),
                    None => BatchValue::Bytes(value),
                },
            ));
        }
        Ok(out)
    }

    pub async fn record_status(
        &self,
        msg_id: &str,
        idx: u32,
        status: &RecipientStatus,
        also: &[Write],
    ) -> Result<()> {
        let mut ops = vec![Op::Status {
            key: super::entry_key(msg_id, idx),
            status: with_expiry(self.status_expiry(), &encode(status)),
        }];
        ops.extend(self.write_ops(also));
        self.submit(Op::Many(ops)).await.map(|_| ())
    }

    pub async fn write(&self, writes: &[Write]) -> Result<()> {
        let ops = self.write_ops(writes);
        self.submit(Op::Many(ops)).await.map(|_| ())
    }

    /// The writer's operations for `writes`; a deleted counter also leaves
    /// memory, as with [`Self::delete`].
    fn write_ops(&self, writes: &[Write]) -> Vec<Op> {
        let put = |key: String, value: Vec<u8>, ttl: Option<Duration>| Op::Put {
            key,
            value,
            ttl,
            only_if_absent: false,
        };
        writes
            .iter()
            .map(|w| match w {
                Write::Put { key, value, ttl } => put(key.clone(), value.clone(), *ttl),
                Write::Delete(key) => {
                    self.counters().remove(key);
                    Op::Delete { key: key.clone() }
                }
                Write::SetAdd { set, member, ttl } => put(set_key(set, member), Vec::new(), *ttl),
                Write::SetRemove { set, member } => Op::Delete {
                    key: set_key(set, member),
                },
            })
            .collect()
    }

    pub async fn set_add(&self, set: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        self.put(&set_key(set, member), b"", ttl).await
    }

    pub async fn set_contains(&self, set: &str, member: &str) -> Result<bool> {
        Ok(self.get(&set_key(set, member)).await?.is_some())
    }

    pub async fn set_remove(&self, set: &str, member: &str) -> Result<bool> {
        self.delete(&set_key(set, member)).await
    }

    pub async fn set_members(&self, set: &str) -> Result<Vec<String>> {
        let prefix = set_key(set, "");
        let now = now_ms();
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(KV).map_err(err)?;
        let mut out = Vec::new();
        for row in table.range(prefix.as_str()..).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let Some(member) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            if live_value(v.value(), now).is_some() {
                out.push(member.to_string());
            }
        }
        Ok(out)
    }
}

fn job_bytes(op: &Op) -> usize {
    match op {
        Op::Enqueue { body, .. } => body.len() + 512,
        Op::Many(ops) => ops.iter().map(job_bytes).sum(),
        _ => 256,
    }
}

/// Commits whatever jobs are waiting as one batch: their changes go to the
/// write-ahead log (one sync), then into redb without a sync; redb itself is
/// synced at checkpoints.
fn writer_loop(db: &Database, kv: &KvSnapshot, mut wal: Wal, rx: mpsc::Receiver<Job>) {
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    let mut frame = Vec::new();
    loop {
        let first = match rx.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty {
                    dirty = !checkpoint(db, &mut wal);
                    last_checkpoint = Instant::now();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut bytes = job_bytes(&first.op);
        let mut batch = vec![first];
        while batch.len() < 4096 && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job_bytes(&job.op);
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        if wal.is_full_for(bytes) && dirty {
            dirty = !checkpoint(db, &mut wal);
            last_checkpoint = Instant::now();
        }
        frame.clear();
        let mut results = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<()> {
            let mut txn = db.begin_write().map_err(err)?;
            txn.set_durability(Durability::None).map_err(err)?;
            {
                let mut tables = Tables::open(&txn)?;
                for job in &batch {
                    results.push(tables.apply(&job.op, &mut frame));
                }
            }
            // Durable from here on: the log holds every change of the batch.
            wal.append(&frame).map_err(err)?;
            txn.commit().map_err(err)
        })();
        match committed {
            Ok(()) => {
                dirty = true;
                kv.refresh(db);
                kv.forget(batch.iter().map(|j| &j.op));
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Embedded(e.to_string())));
                }
            }
        }
        if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            dirty = !checkpoint(db, &mut wal);
            last_checkpoint = Instant::now();
        }
    }
    if dirty {
        checkpoint(db, &mut wal);
    }
}

/// Makes everything redb holds durable, then starts the log over. On
/// failure the log is kept (and still replays at start); returns success.
fn checkpoint(db: &Database, wal: &mut Wal) -> bool {
    let synced = (|| -> Result<()> {
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        txn.commit().map_err(err)?;
        wal.start_over().map_err(err)
    })();
    match synced {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "embedded store checkpoint failed");
            false
        }
    }
}

struct Tables<'t> {
    messages: redb::Table<'t, &'static str, &'static [u8]>,
    queue: redb::Table<'t, &'static str, &'static [u8]>,
    pending: redb::Table<'t, &'static str, u64>,
    status: redb::Table<'t, &'static str, &'static [u8]>,
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    expires: redb::Table<'t, &'static [u8], ()>,
}

fn key_str(key: &[u8]) -> Result<&str> {
    std::str::from_utf8(key).map_err(|_| err("non-UTF-8 key in the write-ahead log"))
}

/// Every change goes through `put` and `remove`, which apply it and record it
/// in the frame for the write-ahead log, so the log holds exactly what redb
/// holds.
impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES).map_err(err)?,
            queue: txn.open_table(QUEUE).map_err(err)?,
            pending: txn.open_table(PENDING).map_err(err)?,
            status: txn.open_table(STATUS).map_err(err)?,
            kv: txn.open_table(KV).map_err(err)?,
            expires: txn.open_table(EXPIRES).map_err(err)?,
        })
    }

    fn put_row(&mut self, table: TableId, key: &[u8], value: &[u8]) -> Result<()> {
        match table {
            TableId::Messages => self.messages.insert(key_str(key)?, value).map(|_| ()),
            TableId::Queue => self.queue.insert(key_str(key)?, value).map(|_| ()),
            TableId::Status => self.status.insert(key_str(key)?, value).map(|_| ()),
            TableId::Kv => self.kv.insert(key_str(key)?, value).map(|_| ()),
            TableId::Expires => self.expires.insert(key, ()).map(|_| ()),
            TableId::Pending => {
                let n = u64::from_le_bytes(
                    value
                        .try_into()
                        .map_err(|_| err("bad pending count in the write-ahead log"))?,
                );
                self.pending.insert(key_str(key)?, n).map(|_| ())
            }
        }
        .map_err(err)
    }

    /// True when the row existed.
    fn remove_row(&mut self, table: TableId, key: &[u8]) -> Result<bool> {
        let key_s = key_str(key);
        match table {
            TableId::Messages => self.messages.remove(key_s?).map(|v| v.is_some()),
            TableId::Queue => self.queue.remove(key_s?).map(|v| v.is_some()),
            TableId::Status => self.status.remove(key_s?).map(|v| v.is_some()),
            TableId::Kv => self.kv.remove(key_s?).map(|v| v.is_some()),
            TableId::Pending => self.pending.remove(key_s?).map(|v| v.is_some()),
            TableId::Expires => self.expires.remove(key).map(|v| v.is_some()),
        }
        .map_err(err)
    }

    fn put(&mut self, frame: &mut Vec<u8>, table: TableId, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_row(table, key, value)?;
        wal::record_put(frame, table, key, value);
        Ok(())
    }

    fn remove(&mut self, frame: &mut Vec<u8>, table: TableId, key: &[u8]) -> Result<bool> {
        let existed = self.remove_row(table, key)?;
        if existed {
            wal::record_remove(frame, table, key);
        }
        Ok(existed)
    }

    fn replay(&mut self, change: Change) -> Result<()> {
        match change {
            Change::Put { table, key, value } => self.put_row(table, &key, &value),
            Change::Remove { table, key } => self.remove_row(table, &key).map(|_| ()),
        }
    }

    fn kv_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.kv.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn apply(&mut self, op: &Op, f: &mut Vec<u8>) -> Result<Outcome> {
        let now = now_ms();
        match op {
            Op::Enqueue {
                msg_id,
                body,
                meta,
                entries,
                finals,
            } => {
                for (key, status) in finals {
                    self.put_status(f, key, status)?;
                }
                let id = msg_id.as_bytes();
                self.put(f, TableId::Messages, id, body)?;
                let count = (entries.len() as u64).to_le_bytes();
                self.put(f, TableId::Pending, id, &count)?;
                self.put_status(f, msg_id, meta)?;
                for (key, entry, status) in entries {
                    self.put(f, TableId::Queue, key.as_bytes(), entry)?;
                    self.put_status(f, key, status)?;
                }
                Ok(Outcome::Unit)
            }
            Op::Settle {
                key,
                msg_id,
                requeue,
                status,
            } => {
                self.put_status(f, key, status)?;
                match requeue {
                    Some(entry) => self.put(f, TableId::Queue, key.as_bytes(), entry)?,
                    None => {
                        if self.remove(f, TableId::Queue, key.as_bytes())? {
                            let left = self
                                .pending
                                .get(msg_id.as_str())
                                .map_err(err)?
                                .map(|v| v.value())
                                .unwrap_or(1)
                                .saturating_sub(1);
                            let id = msg_id.as_bytes();
                            if left == 0 {
                                self.remove(f, TableId::Pending, id)?;
                                self.remove(f, TableId::Messages, id)?;
                            } else {
                                self.put(f, TableId::Pending, id, &left.to_le_bytes())?;
                            }
                        }
                    }
                }
                Ok(Outcome::Unit)
            }
            Op::Put {
                key,
                value,
                ttl,
                only_if_absent,
            } => {
                if *only_if_absent {
                    let exists = self
                        .kv_value(key)?
                        .is_some_and(|v| live_value(&v, now).is_some());
                    if exists {
                        return Ok(Outcome::Bool(false));
                    }
                }
                let exp = match ttl {
                    Some(t) => {
                        let exp = now + t.as_millis() as i64;
                        self.put(f, TableId::Expires, &expiry_key(exp, TAG_KV, key), &[])?;
                        exp
                    }
                    None => 0,
                };
                self.put(f, TableId::Kv, key.as_bytes(), &with_expiry(exp, value))?;
                Ok(Outcome::Bool(true))
            }
            Op::Counters(rows) => {
                for (key, value, exp) in rows {
                    self.put(f, TableId::Expires, &expiry_key(*exp, TAG_KV, key), &[])?;
                    let row = with_expiry(*exp, value.to_string().as_bytes());
                    self.put(f, TableId::Kv, key.as_bytes(), &row)?;
                }
                Ok(Outcome::Unit)
            }
            Op::Delete { key } => {
                let live = self
                    .kv_value(key)?
                    .is_some_and(|v| live_value(&v, now).is_some());
                self.remove(f, TableId::Kv, key.as_bytes())?;
                Ok(Outcome::Bool(live))
            }
            Op::Status { key, status } => {
                self.put_status(f, key, status)?;
                Ok(Outcome::Unit)
            }
            Op::Many(ops) => {
                let mut first = None;
                for op in ops {
                    let outcome = self.apply(op, f)?;
                    first.get_or_insert(outcome);
                }
                Ok(first.unwrap_or(Outcome::Unit))
            }
            Op::Sweep => {
                let mut due = Vec::new();
                for row in self
                    .expires
                    .range(..now.to_be_bytes().as_slice())
                    .map_err(err)?
                {
                    let (k, _) = row.map_err(err)?;
                    due.push(k.value().to_vec());
                    if due.len() >= 10_000 {
                        break;
                    }
                }
                for k in due {
                    self.remove(f, TableId::Expires, &k)?;
                    let (tag, key) = (k[8], &k[9..]);
                    let (table, current) = if tag == TAG_STATUS {
                        let v = self.status.get(key_str(key)?).map_err(err)?;
                        (TableId::Status, v.map(|v| v.value().to_vec()))
                    } else {
                        (TableId::Kv, self.kv_value(key_str(key)?)?)
                    };
                    // The index may be stale (the key was rewritten later).
                    if current.is_some_and(|v| live_value(&v, now).is_none()) {
                        self.remove(f, table, key)?;
                    }
                }
                Ok(Outcome::Unit)
            }
        }
    }

    fn put_status(&mut self, f: &mut Vec<u8>, key: &str, value: &[u8]) -> Result<()> {
        if let Some(exp) = value.get(..8).and_then(|b| b.try_into().ok()) {
            let exp = i64::from_be_bytes(exp);
            if exp != 0 {
                self.put(f, TableId::Expires, &expiry_key(exp, TAG_STATUS, key), &[])?;
            }
        }
        self.put(f, TableId::Status, key.as_bytes(), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_count_in_memory_and_survive_a_clean_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.redb");
        let ttl = Duration::from_secs(60);
        {
            let store = EmbeddedStore::open(&path, ttl).expect("open");
            for want in 1..=3 {
                assert_eq!(store.incr("c", 1, ttl).expect("incr"), want);
            }
            assert_eq!(store.incr("c", -1, ttl).expect("incr"), 2);
            assert_eq!(store.get("c").await.expect("get"), Some(b"2".to_vec()));
            store.close();
            // The writer commits what it was handed before it stops.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let store = EmbeddedStore::open(&path, ttl).expect("reopen");
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
    async fn a_take_counts_only_within_its_limit_and_a_give_never_makes_a_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ttl = Duration::from_secs(60);
        let store = EmbeddedStore::open(&dir.path().join("kiln.redb"), ttl).expect("open");
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

#[cfg(test)]
mod write_tests {
    use super::*;
    use crate::store::{RecipientState, RecipientStatus};

    fn message(id: &str) -> NewMessage {
        NewMessage {
            id: id.into(),
            account: "acme".into(),
            sender: "news@acme.test".into(),
            recipients: vec!["ann@dest.test".into()],
            dropped: Default::default(),
            body: Arc::from(&b"Subject: x\r\n\r\nhi\r\n"[..]),
            received_at_ms: now_ms(),
            ready_at_ms: now_ms(),
            require_tls: false,
            source_ip: None,
            template_id: String::new(),
            task_id: String::new(),
        }
    }

    /// Reads come from the table as of the writer's last commit: a write
    /// is visible to the next read once it has been acknowledged, however
    /// many commits happen meanwhile, and never before.
    #[tokio::test]
    async fn an_acknowledged_write_is_read_at_once() {
        // Also by reads that accept kept answers: a commit drops those it
        // changed before it is acknowledged.
        for age in [Duration::ZERO, Duration::from_secs(60)] {
            acknowledged_writes_are_read_at_once(age).await;
        }
    }

    async fn acknowledged_writes_are_read_at_once(age: Duration) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("kiln.redb"), Duration::from_secs(600))
            .expect("store");
        let get = |key: &str| BatchOp::Get(key.to_string());
        let contains = |m: &str| BatchOp::Contains("block".into(), m.to_string());
        let read = || store.batch(&[get("k"), contains("a")], age).expect("batch");
        assert_eq!(read(), [BatchValue::Bytes(None), BatchValue::Bool(false)]);
        for round in 0..50u32 {
            let value = round.to_string().into_bytes();
            store.put("k", &value, None).await.expect("put");
            store.set_add("block", "a", None).await.expect("add");
            assert_eq!(
                read(),
                [
                    BatchValue::Bytes(Some(value.clone())),
                    BatchValue::Bool(true)
                ],
                "round {round}, age {age:?}"
            );
            assert_eq!(store.get("k").await.expect("get"), Some(value));
            assert!(store.set_remove("block", "a").await.expect("remove"));
            assert!(store.delete("k").await.expect("delete"));
            assert_eq!(
                read(),
                [BatchValue::Bytes(None), BatchValue::Bool(false)],
                "round {round}, age {age:?}"
            );
        }
        store.close();
    }

    /// An outcome and the writes that go with it are on disk together,
    /// and a later write takes keys and set members away in one commit.
    #[tokio::test]
    async fn settle_carries_its_writes_and_they_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.redb");
        let ttl = Duration::from_secs(600);
        let also = [
            Write::Put {
                key: "callback:e1".into(),
                value: b"{job}".to_vec(),
                ttl: Some(ttl),
            },
            Write::SetAdd {
                set: "due:1".into(),
                member: "e1".into(),
                ttl: Some(ttl),
            },
        ];
        {
            let store = EmbeddedStore::open(&path, ttl).expect("open");
            store.enqueue(&message("m1")).await.expect("enqueue");
            let entry = store.lease(10).await.expect("lease").remove(0);
            let status = RecipientStatus {
                recipient: entry.recipient.clone(),
                state: RecipientState::Delivered,
                updated_at_ms: now_ms(),
                next_attempt_at_ms: None,
                attempts: Vec::new(),
                reason: None,
            };
            store
                .settle(&entry, Disposition::Final(status), &also)
                .await
                .expect("settle");
            store.close();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let store = EmbeddedStore::open(&path, ttl).expect("reopen");
        let status = store.status("m1").await.expect("status").expect("m1");
        assert_eq!(status.recipients[0].state, RecipientState::Delivered);
        assert_eq!(
            store.get("callback:e1").await.expect("get"),
            Some(b"{job}".to_vec())
        );
        assert_eq!(store.set_members("due:1").await.expect("members"), ["e1"]);
        assert_eq!(store.queue_len(), 0);

        store
            .write(&[
                Write::Delete("callback:e1".into()),
                Write::SetRemove {
                    set: "due:1".into(),
                    member: "e1".into(),
                },
            ])
            .await
            .expect("write");
        assert_eq!(store.get("callback:e1").await.expect("get"), None);
        assert!(
            store
                .set_members("due:1")
                .await
                .expect("members")
                .is_empty()
        );
    }
}
