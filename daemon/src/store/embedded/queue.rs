//! The queue in the embedded store: messages and their queue entries, the
//! in-memory index of what is ready and what is leased, status records.

use super::*;

impl EmbeddedStore {
    pub async fn enqueue(&self, msg: &NewMessage, also: &[Write]) -> Result<()> {
        self.space.check()?;
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
            .map(|(i, st)| {
                (
                    crate::queued::entry_key(&msg.id, i),
                    with_expiry(exp, &encode(&st)),
                )
            })
            .collect();
        let enqueue = Op::Enqueue {
            msg_id: msg.id.clone(),
            body: msg.body.clone(),
            meta: with_expiry(exp, &encode(&msg.meta())),
            entries: rows,
            finals,
        };
        if also.is_empty() {
            self.submit(enqueue).await?;
        } else {
            let mut ops = vec![enqueue];
            ops.extend(self.write_ops(also));
            self.submit(Op::Many(ops)).await?;
        }
        let mut index = self.index();
        for e in entries {
            index.insert(&e.key(), e.ready_at_ms);
        }
        Ok(())
    }

    /// Queue entries leased now (this node is the only one).
    pub fn leases_held(&self) -> usize {
        self.index().leased.len()
    }

    pub async fn lease(&self, max: usize) -> Result<Vec<QueueEntry>> {
        let now = self.clock.now_ms();
        let keys = {
            let mut index = self.index();
            let mut keys = Vec::new();
            while keys.len() < max {
                match index.ready.first() {
                    Some((at, _)) if *at <= now => {}
                    _ => break,
                }
                let Some((_, key)) = index.ready.pop_first() else {
                    break;
                };
                if index.entries.contains_key(&key) && index.leased.insert(key.clone()) {
                    keys.push(key);
                }
            }
            keys
        };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Leased, so no one else changes them while they are read.
        let read = self.db.begin_read().map_err(err);
        let table = read.and_then(|r| r.open_table(QUEUE).map_err(err));
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                self.unlease(&keys);
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in &keys {
            let row = match table.get(&**key) {
                Ok(row) => row,
                Err(e) => {
                    self.unlease(&keys);
                    return Err(err(e));
                }
            };
            match row.map(|v| decode::<QueueEntry>(key, v.value())) {
                Some(Ok(entry)) => out.push(entry),
                Some(Err(e)) => {
                    // Left in the file for the operator; never leased again.
                    tracing::error!(error = %e, "a queue entry cannot be read");
                    missing.push(key.clone());
                }
                None => missing.push(key.clone()),
            }
        }
        if !missing.is_empty() {
            // Gone from the file (leased entries are settled by their
            // holder only, so never expected) or unreadable: forgotten.
            let mut index = self.index();
            for key in missing {
                index.leased.remove(&key);
                index.entries.remove(&key);
            }
        }
        Ok(out)
    }

    /// Puts leased keys back as they were, when they could not be read.
    fn unlease(&self, keys: &[Arc<str>]) {
        let mut index = self.index();
        for key in keys {
            if index.leased.remove(key)
                && let Some(at) = index.entries.get(key).copied()
            {
                index.ready.insert((at, key.clone()));
            }
        }
    }

    pub fn next_ready_ms(&self) -> Option<i64> {
        self.index().ready.first().map(|(t, _)| *t)
    }

    pub fn scan_queue(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::QueuePage> {
        use crate::store::EntryState;
        use std::ops::Bound;
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(QUEUE).map_err(err)?;
        let range = match cursor {
            Some(c) => table.range::<&str>((Bound::Excluded(c), Bound::Unbounded)),
            None => table.range::<&str>(..),
        }
        .map_err(err)?;
        let mut rows = Vec::new();
        let mut more = false;
        for row in range {
            if rows.len() == limit.max(1) {
                more = true;
                break;
            }
            let (k, v) = row.map_err(err)?;
            match decode::<QueueEntry>(k.value(), v.value()) {
                Ok(e) => rows.push((k.value().to_string(), e)),
                Err(e) => tracing::error!(error = %e, "a queue entry cannot be read"),
            }
        }
        let now = self.clock.now_ms();
        let index = self.index();
        let next = if more {
            rows.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let entries = rows
            .into_iter()
            .filter_map(|(k, e)| {
                let at = *index.entries.get(k.as_str())?;
                let state = if index.leased.contains(k.as_str()) {
                    EntryState::Leased
                } else if at <= now {
                    EntryState::Due
                } else {
                    EntryState::Waiting
                };
                Some((
                    QueueEntry {
                        ready_at_ms: at,
                        ..e
                    },
                    state,
                ))
            })
            .collect();
        Ok(crate::store::QueuePage { entries, next })
    }

    pub fn make_due(&self, keys: &[String]) -> usize {
        let now = self.clock.now_ms();
        let mut index = self.index();
        let mut made = 0;
        for key in keys {
            if index.leased.contains(key.as_str()) {
                continue;
            }
            let Some((shared, at)) = index
                .entries
                .get_key_value(key.as_str())
                .map(|(k, at)| (k.clone(), *at))
            else {
                continue;
            };
            // As on Redis: only what was due later moves, and is counted.
            if at > now && index.ready.remove(&(at, shared)) {
                index.insert(key, now);
                made += 1;
            }
        }
        made
    }

    pub fn queue_counts(&self) -> crate::store::QueueCounts {
        let now = self.clock.now_ms();
        let index = self.index();
        let ready = index.ready.len() as u64;
        let due = index.ready.iter().take_while(|(at, _)| *at <= now).count() as u64;
        crate::store::QueueCounts {
            due,
            waiting: ready - due,
            leased: index.leased.len() as u64,
        }
    }

    pub fn queue_len(&self) -> u64 {
        self.index().entries.len() as u64
    }

    pub fn release(&self, entries: &[QueueEntry]) {
        let mut index = self.index();
        for e in entries {
            let key = e.key();
            let at = index.entries.get(key.as_str()).copied();
            if let Some(key) = index.leased.take(key.as_str()) {
                index.ready.insert((at.unwrap_or(e.ready_at_ms), key));
            }
        }
    }

    /// Gives leased entries back, each due at its `ready_at_ms`. Only the
    /// index changes: after a restart the entries are due at once.
    pub fn park(&self, entries: &[QueueEntry]) {
        let mut index = self.index();
        for e in entries {
            if let Some(key) = index.leased.take(e.key().as_str()) {
                index.entries.insert(key.clone(), e.ready_at_ms);
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
            Disposition::Retry(next, status) => {
                (Some(encode(next)), status, Some((**next).clone()))
            }
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
        index.leased.remove(key.as_str());
        match retry_entry {
            Some(next) => index.insert(&key, next.ready_at_ms),
            None => {
                index.entries.remove(key.as_str());
            }
        }
        Ok(())
    }

    pub async fn status(&self, msg_id: &str) -> Result<Option<MessageStatus>> {
        let now = self.clock.now_ms();
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

    pub async fn record_status(
        &self,
        msg_id: &str,
        idx: u32,
        status: &RecipientStatus,
        also: &[Write],
    ) -> Result<()> {
        let mut ops = vec![Op::Status {
            key: crate::queued::entry_key(msg_id, idx),
            status: with_expiry(self.status_expiry(), &encode(status)),
        }];
        ops.extend(self.write_ops(also));
        self.submit(Op::Many(ops)).await.map(|_| ())
    }
}
