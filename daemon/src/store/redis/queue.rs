//! The queue in Redis: messages, queue entries, leases (renewed while an
//! attempt runs), status records; each message in its shard, reads of the
//! whole queue over every shard.

use super::*;

impl RedisStore {
    pub async fn enqueue(&self, msg: &NewMessage, also: &[Write]) -> Result<()> {
        let shard = self.shard_of(&msg.id);
        let mut inv = self.enqueue.prepare_invoke();
        inv.key(self.q(shard, "ready"))
            .key(self.q(shard, "entries"))
            .key(self.q(shard, "pending"))
            .key(self.body_key(&msg.id))
            .key(self.status_key(&msg.id))
            .arg(msg.ready_at_ms)
            .arg(&msg.id)
            .arg(&msg.body[..])
            .arg(encode(&msg.meta()))
            .arg(self.retention.as_secs().max(1));
        for e in msg.entries() {
            inv.arg(e.key())
                .arg(encode(&e))
                .arg(e.rcpt_idx)
                .arg(encode(&msg.initial_status(&e.recipient)));
        }
        for (i, status) in msg.dropped_statuses() {
            inv.arg(crate::queued::entry_key(&msg.id, i))
                .arg("")
                .arg(i)
                .arg(encode(&status));
        }
        self.invoke_with(&self.enqueue, &inv, also).await?;
        // Acknowledged only once the replicas asked for have it too.
        self.replicated(&self.q(shard, "ready")).await?;
        if self.shard_count() > 1 {
            self.hinted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard);
        }
        Ok(())
    }

    /// Up to `max` due entries: from the shards this node queued to since
    /// they were last asked, or (when there are none, and every
    /// `FULL_LEASE_EVERY`) from every shard in turn, as many as entries are
    /// wanted, starting where the last such lease stopped. Asking every
    /// shard each time would cost one script per shard per lease, most of
    /// them finding nothing.
    pub async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<QueueEntry>> {
        let now = self.clock.now_ms();
        self.lease_ms
            .store(lease.as_millis() as i64, Ordering::Relaxed);
        let shards = self.shards_to_ask(max);
        let rows: Vec<Vec<Option<Vec<u8>>>> = if let [shard] = shards[..] {
            vec![self.lease_from(shard, now, lease, max).await?]
        } else {
            let mut pipe = redis::pipe();
            for (i, shard) in shards.iter().enumerate() {
                // `max` shared out, the first shards taking what is left over.
                let share = max / shards.len() + usize::from(i < max % shards.len());
                pipe.cmd("EVALSHA")
                    .arg(self.lease.get_hash())
                    .arg(3)
                    .arg(self.q(*shard, "ready"))
                    .arg(self.q(*shard, "leased"))
                    .arg(self.q(*shard, "entries"))
                    .arg(now)
                    .arg(lease.as_millis() as i64)
                    .arg(share.max(1));
            }
            match pipe.query_async(&mut self.conn.clone()).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // A restarted server, or a replica promoted (scripts
                    // are not replicated): loaded on every master, asked
                    // again.
                    self.lease
                        .prepare_invoke()
                        .load_async(&mut self.conn.clone())
                        .await?;
                    pipe.query_async(&mut self.conn.clone()).await?
                }
                other => other?,
            }
        };
        let mut out = Vec::new();
        for row in rows.into_iter().flatten().flatten() {
            match decode::<QueueEntry>("queue entry", &row) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!(error = %e, "skipping corrupt queue entry"),
            }
        }
        self.held().extend(out.iter().map(|e| e.key()));
        Ok(out)
    }

    fn shards_to_ask(&self, max: usize) -> Vec<usize> {
        let n = self.shard_count();
        let mut hinted = self.hinted.lock().unwrap_or_else(|p| p.into_inner());
        let mut last_full = self
            .last_full_lease
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let shards: Vec<usize> = if hinted.is_empty() || last_full.elapsed() >= FULL_LEASE_EVERY {
            *last_full = Instant::now();
            let asked = max.clamp(1, n);
            let first = self.next_shard.fetch_add(asked, Ordering::Relaxed);
            (0..asked).map(|i| (first + i) % n).collect()
        } else {
            hinted.iter().copied().take(max.max(1)).collect()
        };
        for s in &shards {
            hinted.remove(s);
        }
        shards
    }

    async fn lease_from(
        &self,
        shard: usize,
        now: i64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self
            .lease
            .key(self.q(shard, "ready"))
            .key(self.q(shard, "leased"))
            .key(self.q(shard, "entries"))
            .arg(now)
            .arg(lease.as_millis() as i64)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// `keys` (entry keys) by the shard they are in.
    fn by_shard<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Vec<(usize, Vec<&'k str>)> {
        let mut out: Vec<(usize, Vec<&'k str>)> = Vec::new();
        for k in keys {
            let shard = self.shard_of_entry(k);
            match out.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, v)) => v.push(k),
                None => out.push((shard, vec![k])),
            }
        }
        out
    }

    pub(super) async fn renew_leases(&self) -> Result<()> {
        let keys: Vec<String> = self.held().iter().cloned().collect();
        let lease_ms = self.lease_ms.load(Ordering::Relaxed);
        for (shard, keys) in self.by_shard(keys.iter().map(String::as_str)) {
            for chunk in keys.chunks(1000) {
                let mut inv = self.renew.prepare_invoke();
                inv.key(self.q(shard, "leased")).arg(lease_ms);
                for k in chunk {
                    inv.arg(*k);
                }
                let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
            }
        }
        Ok(())
    }

    pub async fn next_ready_ms(&self) -> Result<Option<i64>> {
        let mut pipe = redis::pipe();
        for shard in 0..self.shard_count() {
            pipe.zrange_withscores(self.q(shard, "ready"), 0, 0)
                .zrange_withscores(self.q(shard, "leased"), 0, 0);
        }
        let firsts: Vec<Vec<(String, f64)>> = pipe.query_async(&mut self.conn.clone()).await?;
        // A lease's end is on Redis's clock, near enough to this node's to
        // say when to look again.
        Ok(firsts.into_iter().flatten().map(|(_, s)| s as i64).min())
    }

    pub async fn body(&self, msg_id: &str) -> Result<Option<Arc<[u8]>>> {
        let body: Option<Vec<u8>> = self.conn.clone().get(self.body_key(msg_id)).await?;
        Ok(body.map(Arc::from))
    }

    pub async fn settle(
        &self,
        entry: &QueueEntry,
        disposition: Disposition,
        also: &[Write],
    ) -> Result<()> {
        let (requeue, ready_at, status) = match &disposition {
            Disposition::Final(s) => (Vec::new(), 0, s),
            Disposition::Retry(next, s) => (encode(next), next.ready_at_ms, s),
        };
        let shard = self.shard_of(&entry.msg_id);
        let mut inv = self.settle.prepare_invoke();
        inv.key(self.q(shard, "leased"))
            .key(self.q(shard, "ready"))
            .key(self.q(shard, "entries"))
            .key(self.q(shard, "pending"))
            .key(self.body_key(&entry.msg_id))
            .key(self.status_key(&entry.msg_id))
            .arg(entry.key())
            .arg(&entry.msg_id)
            .arg(entry.rcpt_idx)
            .arg(encode(status))
            .arg(self.retention.as_secs().max(1))
            .arg(requeue)
            .arg(ready_at);
        let settled = self.invoke_with(&self.settle, &inv, also).await;
        // Held no more, settled or not: a lease whose settling failed (its
        // master gone) is not renewed, so it lapses and the entry is
        // attempted again by whoever leases it then.
        self.held().remove(&entry.key());
        settled?;
        // The outcome is reported (its event, its statistics) only once the
        // replicas asked for have it, so that a failover does not undo what
        // was told. Past the wait it stands on the master alone: said, not
        // undone (the entry is settled there; giving it back changes
        // nothing).
        if let Err(e) = self.replicated(&self.q(shard, "ready")).await {
            tracing::warn!(msg_id = %entry.msg_id, error = %e, "an outcome recorded on the Redis master alone");
        }
        Ok(())
    }

    /// `inv` of `script` with `also` in one MULTI (`also` empty: the script
    /// alone). The script may be missing (a restarted server): then the
    /// rest ran without it, and all of it runs again, which the writes
    /// allow (they set, they do not add up). On a cluster, where one MULTI
    /// cannot span slots, `also` is written first, then the script runs:
    /// a node that dies between leaves `also` done and the step to do again
    /// (an event filed twice, never one lost).
    async fn invoke_with(
        &self,
        script: &redis::Script,
        inv: &redis::ScriptInvocation<'_>,
        also: &[Write],
    ) -> Result<()> {
        if also.is_empty() || self.conn.is_cluster() {
            if !also.is_empty() {
                self.write(also).await?;
            }
            let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
            return Ok(());
        }
        let run = |load: bool| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            if load {
                pipe.load_script(script).ignore();
            }
            pipe.invoke_script(inv).ignore();
            self.add_writes(&mut pipe, also);
            pipe
        };
        let first: redis::RedisResult<()> = run(false).query_async(&mut self.conn.clone()).await;
        let done = match first {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                run(true).query_async(&mut self.conn.clone()).await
            }
            other => other,
        };
        self.forget_writes(also);
        Ok(done?)
    }

    pub async fn record_status(
        &self,
        msg_id: &str,
        idx: u32,
        status: &RecipientStatus,
        also: &[Write],
    ) -> Result<()> {
        if self.conn.is_cluster() {
            // One MULTI cannot span slots: `also` first (see `invoke_with`).
            self.write(also).await?;
            let _: () = self
                .conn
                .clone()
                .hset(self.status_key(msg_id), idx, encode(status))
                .await?;
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.status_key(msg_id), idx, encode(status))
            .ignore();
        self.add_writes(&mut pipe, also);
        let done: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
        self.forget_writes(also);
        Ok(done?)
    }

    pub async fn release(&self, entries: &[QueueEntry]) -> Result<()> {
        let now = self.clock.now_ms();
        self.release_at(entries, |_| now).await
    }

    /// Gives leased entries back, each due at its `ready_at_ms`.
    pub async fn park(&self, entries: &[QueueEntry]) -> Result<()> {
        self.release_at(entries, |e| e.ready_at_ms).await
    }

    pub(super) async fn release_at(
        &self,
        entries: &[QueueEntry],
        at: impl Fn(&QueueEntry) -> i64,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut shards: Vec<Vec<&QueueEntry>> = vec![Vec::new(); self.shard_count()];
        for e in entries {
            shards[self.shard_of(&e.msg_id)].push(e);
        }
        let mut failed = None;
        for (shard, entries) in shards.iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let mut inv = self.release.prepare_invoke();
            inv.key(self.q(shard, "leased")).key(self.q(shard, "ready"));
            for e in entries {
                inv.arg(e.key()).arg(at(e));
            }
            let released: redis::RedisResult<i64> = inv.invoke_async(&mut self.conn.clone()).await;
            if let Err(e) = released {
                failed.get_or_insert(e);
            }
        }
        // Held no more, released or not (as in `settle`): a lease not
        // renewed lapses.
        let mut held = self.held();
        for e in entries {
            held.remove(&e.key());
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    pub async fn status(&self, msg_id: &str) -> Result<Option<MessageStatus>> {
        let key = self.status_key(msg_id);
        let fields: Vec<(String, Vec<u8>)> = self.conn.clone().hgetall(&key).await?;
        let mut meta: Option<MessageMeta> = None;
        let mut recipients: Vec<(u32, RecipientStatus)> = Vec::new();
        for (field, value) in fields {
            if field == "meta" {
                meta = Some(decode(&key, &value)?);
            } else if let Ok(idx) = field.parse::<u32>() {
                recipients.push((idx, decode(&key, &value)?));
            }
        }
        recipients.sort_by_key(|(i, _)| *i);
        Ok(meta.map(|meta| MessageStatus {
            meta,
            recipients: recipients.into_iter().map(|(_, r)| r).collect(),
        }))
    }

    pub async fn queue_counts(&self) -> Result<crate::store::QueueCounts> {
        let now = self.clock.now_ms();
        let mut pipe = redis::pipe();
        for shard in 0..self.shard_count() {
            pipe.zcount(self.q(shard, "ready"), "-inf", now)
                .zcount(self.q(shard, "ready"), format!("({now}"), "+inf")
                .zcard(self.q(shard, "leased"));
        }
        let counts: Vec<u64> = pipe.query_async(&mut self.conn.clone()).await?;
        let mut total = crate::store::QueueCounts {
            due: 0,
            waiting: 0,
            leased: 0,
        };
        for c in counts.chunks(3) {
            total.due += c[0];
            total.waiting += c.get(1).copied().unwrap_or(0);
            total.leased += c.get(2).copied().unwrap_or(0);
        }
        Ok(total)
    }

    pub async fn scan_queue(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::QueuePage> {
        use crate::store::EntryState;
        // The cursor is `shard:HSCAN cursor`; one from before shards is
        // shard 0's.
        let (shard, start): (usize, u64) = match cursor.map(|c| c.split_once(':')) {
            Some(Some((s, c))) => (s.parse().unwrap_or(0), c.parse().unwrap_or(0)),
            Some(None) => (0, cursor.and_then(|c| c.parse().ok()).unwrap_or(0)),
            None => (0, 0),
        };
        if shard >= self.shard_count() {
            return Ok(crate::store::QueuePage {
                entries: Vec::new(),
                next: None,
            });
        }
        let (next, rows): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
            .arg(self.q(shard, "entries"))
            .arg(start)
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut pipe = redis::pipe();
        for (key, _) in &rows {
            pipe.zscore(self.q(shard, "ready"), key)
                .zscore(self.q(shard, "leased"), key);
        }
        let scores: Vec<Option<f64>> = if rows.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn.clone()).await?
        };
        let now = self.clock.now_ms();
        let mut entries = Vec::with_capacity(rows.len());
        for ((key, raw), s) in rows.iter().zip(scores.chunks(2)) {
            let Ok(e) = decode::<QueueEntry>(key, raw) else {
                tracing::error!(key = %key, "a queue entry cannot be read");
                continue;
            };
            let (ready, leased) = (s.first().copied().flatten(), s.get(1).copied().flatten());
            let (state, at) = match (ready, leased) {
                (_, Some(_)) => (EntryState::Leased, e.ready_at_ms),
                (Some(at), None) if at as i64 <= now => (EntryState::Due, at as i64),
                (Some(at), None) => (EntryState::Waiting, at as i64),
                // Settled while this page was read.
                (None, None) => continue,
            };
            entries.push((
                QueueEntry {
                    ready_at_ms: at,
                    ..e
                },
                state,
            ));
        }
        let next = if next != 0 {
            Some(format!("{shard}:{next}"))
        } else {
            (shard + 1 < self.shard_count()).then(|| format!("{}:0", shard + 1))
        };
        Ok(crate::store::QueuePage { entries, next })
    }

    pub async fn make_due(&self, keys: &[String]) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut made = 0;
        for (shard, keys) in self.by_shard(keys.iter().map(String::as_str)) {
            for chunk in keys.chunks(500) {
                // XX: only entries waiting in `ready` (a leased one is not
                // there); LT: never later than it was.
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(self.q(shard, "ready"))
                    .arg("XX")
                    .arg("LT")
                    .arg("CH");
                for k in chunk {
                    cmd.arg(now).arg(*k);
                }
                let changed: usize = cmd.query_async(&mut self.conn.clone()).await?;
                made += changed;
            }
        }
        Ok(made)
    }

    pub async fn queue_len(&self) -> Result<u64> {
        let mut pipe = redis::pipe();
        for shard in 0..self.shard_count() {
            pipe.hlen(self.q(shard, "entries"));
        }
        let lens: Vec<u64> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(lens.iter().sum())
    }
}
