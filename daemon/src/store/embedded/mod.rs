//! Embedded store: one redb file, for a single node.
//!
//! All writes go to one writer thread that folds whatever is waiting into a
//! single transaction and commits it with one fsync (group commit): many SMTP
//! sessions share the cost of a sync, and none is answered before its data is
//! on disk. The queue index (what is ready when, what is leased) lives in
//! memory and is rebuilt from the file at start, so leases cost no disk write:
//! after a crash every entry is simply ready again.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the store's parts, opening and closing it |
//! | `queue.rs` | messages, queue entries, leases, status records |
//! | `counters.rs` | counters in memory, written every second |
//! | `records.rs` | keys, sets and batches |
//! | `writer.rs` | the writer thread: group commit, the log, checkpoints |

use super::read_cache::{Read, ReadCache};
use super::wal::{self, Change, TableId, Wal};
use super::{BatchOp, BatchValue, OpRef, prefixed_into};
use super::{Result, StoreError, Write, decode, encode};
use crate::clock::Clock;
use crate::queued::{
    Disposition, MessageMeta, MessageStatus, NewMessage, QueueEntry, RecipientStatus,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod counters;
mod queue;
mod records;
pub mod space;
#[cfg(test)]
mod tests;
mod writer;

use writer::{Tables, writer_loop};
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

/// What scheduling needs of the queue, kept in memory: each entry's key
/// and when it is due. The entries themselves are read from the file when
/// they are leased, so a queue of a million costs a key and a time each.
#[derive(Default)]
struct QueueIndex {
    ready: BTreeSet<(i64, Arc<str>)>,
    /// Every queued entry → its due time as stored.
    entries: HashMap<Arc<str>, i64>,
    leased: HashSet<Arc<str>>,
}

impl QueueIndex {
    /// Adds or updates an entry due at `ready_at_ms`.
    fn insert(&mut self, key: &str, ready_at_ms: i64) {
        let key = self.shared(key);
        self.entries.insert(key.clone(), ready_at_ms);
        self.ready.insert((ready_at_ms, key));
    }

    /// The index's own copy of `key`, if it holds one (one allocation per
    /// entry, shared by its sets).
    fn shared(&self, key: &str) -> Arc<str> {
        self.entries
            .get_key_value(key)
            .map_or_else(|| Arc::from(key), |(k, _)| k.clone())
    }
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
    /// Kiln's time: expiries, ready times, counter windows.
    clock: Clock,
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
    /// Egress pacing and connection slots: this node's alone.
    shaping: crate::store::shaping::LocalShaping,
    /// Free space on the store's disk, checked before new messages.
    space: space::DiskSpace,
}

/// A counter lives in memory and reaches the file within a second (and at
/// a clean stop): rate and quota counters change on every message and need
/// no sync of their own. A crash loses at most the last second of counts.
struct Counter {
    value: i64,
    expires_at: i64,
    dirty: bool,
    /// When it was last counted or read (ms): a clean counter idle for
    /// [`COUNTER_IDLE_MS`] leaves memory (the file has it).
    used_at: i64,
}

/// A counter written to the file and not used for this long is dropped
/// from memory; the next use reads it back. Per-recipient counters would
/// otherwise hold memory for every address of the hour.
const COUNTER_IDLE_MS: i64 = 3_000;

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
    let exp = expiry_of(raw);
    (exp == 0 || exp > now).then_some(&raw[8..])
}

/// When a stored row (`with_expiry`) expires, in ms; 0: never (or a row
/// too short to say).
fn expiry_of(raw: &[u8]) -> i64 {
    raw.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i64::from_be_bytes)
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
    pub fn shaping(&self) -> &crate::store::shaping::LocalShaping {
        &self.shaping
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Free space kept for what is queued: new messages are refused below it.
    pub fn set_min_free(&self, bytes: u64) {
        self.space.set_reserve(bytes);
    }

    pub fn open(path: &Path, retention: Duration, clock: Clock) -> Result<Arc<EmbeddedStore>> {
        // redb caches up to 1 GiB of pages by default: a node holding a
        // large queue would grow toward it. Recent bodies are cached by the
        // queue, the index of queued entries is in memory, and the file's
        // pages stay in the kernel's page cache: a larger cache here cost
        // memory (64 MiB of it showed as 88 MB more resident for 100,000
        // queued recipients) and saved no measurable CPU.
        const PAGE_CACHE_BYTES: usize = 8 << 20;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Embedded(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Database::builder()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(path)
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
                index.insert(k.value(), entry.ready_at_ms);
            }
        }
        let db = Arc::new(db);
        let kv = Arc::new(KvSnapshot::open(&db)?);
        let (tx, rx) = mpsc::channel::<Job>();
        let (writer_db, writer_kv, writer_clock) = (db.clone(), kv.clone(), clock.clone());
        std::thread::Builder::new()
            .name("kiln-store-writer".into())
            .spawn(move || writer_loop(&writer_db, &writer_kv, wal, rx, writer_clock))
            .map_err(err)?;
        let store = Arc::new(EmbeddedStore {
            db,
            kv,
            writer: Mutex::new(Some(tx)),
            index: Mutex::new(index),
            retention,
            counters: Mutex::new(Counters::default()),
            shaping: Default::default(),
            space: space::DiskSpace::new(
                path.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            ),
            clock,
        });
        let flusher = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(COUNTER_FLUSH).await;
                let Some(store) = flusher.upgrade() else {
                    break;
                };
                store.kv.reads.sweep(Instant::now());
                let dirty = store.take_dirty_counters();
                if !dirty.is_empty()
                    && let Err(e) = store.submit(Op::Counters(dirty)).await
                {
                    tracing::warn!(error = %e, "writing counters failed");
                    // Not in the file: kept in memory and written next time
                    // (all of them: no copy of a second's keys is kept for
                    // a failure, which is rare).
                    store.mark_all_dirty();
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
        self.clock.now_ms() + self.retention.as_millis() as i64
    }
}
