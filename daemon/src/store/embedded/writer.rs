//! The embedded store's writer thread: it folds whatever jobs wait into one
//! batch (group commit), appends the batch's row changes to the write-ahead
//! log with one sync, commits them to redb without a sync, and syncs redb
//! at checkpoints.

use super::*;

pub(super) fn job_bytes(op: &Op) -> usize {
    match op {
        Op::Enqueue { body, .. } => body.len() + 512,
        Op::Many(ops) => ops.iter().map(job_bytes).sum(),
        _ => 256,
    }
}

/// The largest write-ahead frame buffer kept from one batch to the next.
const FRAME_KEPT: usize = 1 << 20;

/// Commits whatever jobs are waiting as one batch: their changes go to the
/// write-ahead log (one sync), then into redb without a sync; redb itself is
/// synced at checkpoints.
pub(super) fn writer_loop(
    db: &Database,
    kv: &KvSnapshot,
    mut wal: Wal,
    rx: mpsc::Receiver<Job>,
    clock: Clock,
) {
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
        let mut logged = false;
        let committed = (|| -> Result<()> {
            let mut txn = db.begin_write().map_err(storage_err)?;
            txn.set_durability(Durability::None).map_err(err)?;
            {
                let now = clock.now_ms();
                let mut tables = Tables::open(&txn)?;
                for job in &batch {
                    results.push(tables.apply(&job.op, &mut frame, now));
                }
            }
            // Durable from here on: the log holds every change of the batch.
            wal.append(&frame).map_err(err)?;
            logged = true;
            txn.commit().map_err(storage_err)
        })();
        match committed {
            Ok(()) => {
                dirty = true;
                if let Some(m) = crate::metrics::get() {
                    m.commit_messages.observe(batch.len() as f64);
                }
                kv.refresh(db);
                kv.forget(batch.iter().map(|j| &j.op));
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                if matches!(e, StoreError::StorageFailed(_)) {
                    // Its callers hear it failed: it must not replay.
                    if logged {
                        let _ = wal.retract_last();
                    }
                    stop_on_storage_failure(&e);
                }
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Embedded(e.to_string())));
                }
            }
        }
        if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            dirty = !checkpoint(db, &mut wal);
            last_checkpoint = Instant::now();
        }
        // A burst's frame (a second's counters for every recipient of a
        // large queue) is not kept for the next ones.
        if frame.capacity() > FRAME_KEPT {
            frame = Vec::new();
        }
    }
    if dirty {
        checkpoint(db, &mut wal);
    }
}

/// Makes everything redb holds durable, then starts the log over. On
/// failure the log is kept (and still replays at start); returns success.
pub(super) fn checkpoint(db: &Database, wal: &mut Wal) -> bool {
    let synced = (|| -> Result<()> {
        let mut txn = db.begin_write().map_err(storage_err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        txn.commit().map_err(storage_err)?;
        wal.start_over().map_err(err)
    })();
    match synced {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "embedded store checkpoint failed");
            if matches!(e, StoreError::StorageFailed(_)) {
                stop_on_storage_failure(&e);
            }
            false
        }
    }
}

/// A redb error, told apart when redb could not write its file: it then
/// refuses every write until the file is opened again.
fn storage_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => {
            StoreError::StorageFailed(e.to_string())
        }
        e => err(e),
    }
}

/// The store's file could not be written (a disk full past the reserve, a
/// failing disk). Going on would deliver mail whose outcome cannot be
/// recorded, again and again; the node stops instead, and its supervisor
/// (systemd's `Restart=on-failure`) starts it again, which replays the
/// write-ahead log: everything acknowledged is there.
fn stop_on_storage_failure(e: &StoreError) -> ! {
    use std::io::Write;
    // The log is written by a background thread that exit() does not wait
    // for: say it on stderr too (the journal has both).
    tracing::error!(error = %e, "the embedded store cannot write its file; stopping");
    // Not eprintln!, which panics when stderr cannot be written (a log file
    // on the same full disk).
    let _ = writeln!(
        std::io::stderr(),
        "kiln: the embedded store cannot write its file ({e}); stopping, to be started again \
         (nothing acknowledged is lost: the write-ahead log replays at start)"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::process::exit(EXIT_STORAGE_FAILED);
}

/// The exit status when the store's file cannot be written (EX_IOERR).
pub const EXIT_STORAGE_FAILED: i32 = 74;

pub(super) struct Tables<'t> {
    messages: redb::Table<'t, &'static str, &'static [u8]>,
    queue: redb::Table<'t, &'static str, &'static [u8]>,
    pending: redb::Table<'t, &'static str, u64>,
    status: redb::Table<'t, &'static str, &'static [u8]>,
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    expires: redb::Table<'t, &'static [u8], ()>,
}

pub(super) fn key_str(key: &[u8]) -> Result<&str> {
    std::str::from_utf8(key).map_err(|_| err("non-UTF-8 key in the write-ahead log"))
}

/// Every change goes through `put` and `remove`, which apply it and record it
/// in the frame for the write-ahead log, so the log holds exactly what redb
/// holds.
impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t redb::WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES).map_err(err)?,
            queue: txn.open_table(QUEUE).map_err(err)?,
            pending: txn.open_table(PENDING).map_err(err)?,
            status: txn.open_table(STATUS).map_err(err)?,
            kv: txn.open_table(KV).map_err(err)?,
            expires: txn.open_table(EXPIRES).map_err(err)?,
        })
    }

    pub(super) fn put_row(&mut self, table: TableId, key: &[u8], value: &[u8]) -> Result<()> {
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
    pub(super) fn remove_row(&mut self, table: TableId, key: &[u8]) -> Result<bool> {
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

    pub(super) fn put(
        &mut self,
        frame: &mut Vec<u8>,
        table: TableId,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.put_row(table, key, value)?;
        wal::record_put(frame, table, key, value);
        Ok(())
    }

    pub(super) fn remove(
        &mut self,
        frame: &mut Vec<u8>,
        table: TableId,
        key: &[u8],
    ) -> Result<bool> {
        let existed = self.remove_row(table, key)?;
        if existed {
            wal::record_remove(frame, table, key);
        }
        Ok(existed)
    }

    pub(super) fn replay(&mut self, change: Change) -> Result<()> {
        match change {
            Change::Put { table, key, value } => self.put_row(table, &key, &value),
            Change::Remove { table, key } => self.remove_row(table, &key).map(|_| ()),
        }
    }

    pub(super) fn kv_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.kv.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    pub(super) fn apply(&mut self, op: &Op, f: &mut Vec<u8>, now: i64) -> Result<Outcome> {
        match op {
            Op::Enqueue {
                msg_id,
                body,
                meta,
                entries,
                finals,
            } => {
                // The message's record first: its recipients' records are
                // swept with it.
                self.put_status(f, msg_id, meta)?;
                for (key, status) in finals {
                    self.put_status(f, key, status)?;
                }
                let id = msg_id.as_bytes();
                self.put(f, TableId::Messages, id, body)?;
                // No row means one: most messages have a single recipient,
                // and settling reads a missing count as 1.
                if entries.len() != 1 {
                    let count = (entries.len() as u64).to_le_bytes();
                    self.put(f, TableId::Pending, id, &count)?;
                }
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
                    let outcome = self.apply(op, f, now)?;
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
                    if tag == TAG_STATUS && !key.contains(&b'/') {
                        // A message's record: its recipients' records too,
                        // and the message due again when one outlives it.
                        let msg_id = key_str(key)?.to_string();
                        if let Some(at) = self.sweep_message(f, &msg_id, now)? {
                            self.put(
                                f,
                                TableId::Expires,
                                &expiry_key(at, TAG_STATUS, &msg_id),
                                &[],
                            )?;
                        }
                        continue;
                    }
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

    /// Writes a status record. Only a message's own record (`<id>`) gets a
    /// row in the expiry index: the sweep that finds it due also goes
    /// through the message's recipient records (`<id>/<n>`), which expire
    /// no earlier. A recipient's record gets a row of its own only when
    /// its message's record is gone (kept past it, or never written).
    pub(super) fn put_status(&mut self, f: &mut Vec<u8>, key: &str, value: &[u8]) -> Result<()> {
        let exp = expiry_of(value);
        if exp != 0 {
            let indexed_by_message = match key.split_once('/') {
                Some((msg_id, _)) => self.status.get(msg_id).map_err(err)?.is_some(),
                None => false,
            };
            if !indexed_by_message {
                self.put(f, TableId::Expires, &expiry_key(exp, TAG_STATUS, key), &[])?;
            }
        }
        self.put(f, TableId::Status, key.as_bytes(), value)
    }

    /// Sweeps a message's status records (its own, `<msg_id>`, and its
    /// recipients', `<msg_id>/<n>`) whose time has come; returns when the
    /// earliest one left expires (None: none left, or none that expires).
    fn sweep_message(&mut self, f: &mut Vec<u8>, msg_id: &str, now: i64) -> Result<Option<i64>> {
        let mut expired = Vec::new();
        let mut next: Option<i64> = None;
        let mut look = |key: &str, value: &[u8]| {
            let exp = expiry_of(value);
            if live_value(value, now).is_none() {
                expired.push(key.to_string());
            } else if exp != 0 {
                next = Some(next.map_or(exp, |n| n.min(exp)));
            }
        };
        if let Some(v) = self.status.get(msg_id).map_err(err)? {
            look(msg_id, v.value());
        }
        let (start, end) = (format!("{msg_id}/"), format!("{msg_id}0")); // '0' sorts right after '/'
        for row in self
            .status
            .range(start.as_str()..end.as_str())
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            look(k.value(), v.value());
        }
        for key in expired {
            self.remove(f, TableId::Status, key.as_bytes())?;
        }
        Ok(next)
    }
}
