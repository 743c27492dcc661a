//! Keys, sets and batches of the embedded store: rows with an expiry,
//! read from the last commit's snapshot.

use super::*;

impl EmbeddedStore {
    /// A live KV row and its expiry (0 = never; counters always expire).
    pub(super) fn stored_kv(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let table = self.kv.current();
        let Some(v) = table.get(key).map_err(err)? else {
            return Ok(None);
        };
        let raw = v.value();
        Ok(live_value(raw, self.clock.now_ms()).map(|b| (b.to_vec(), expiry_of(raw))))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let now = self.clock.now_ms();
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
            .is_some_and(|c| c.expires_at > self.clock.now_ms());
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
    /// [`Store::batch_within`](crate::store::Store::batch_within)): a row already
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
        let now = self.clock.now_ms();
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
    pub(super) fn read_rows(
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

    pub async fn write(&self, writes: &[Write]) -> Result<()> {
        let ops = self.write_ops(writes);
        self.submit(Op::Many(ops)).await.map(|_| ())
    }

    /// The writer's operations for `writes`; a deleted counter also leaves
    /// memory, as with [`Self::delete`].
    pub(super) fn write_ops(&self, writes: &[Write]) -> Vec<Op> {
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
        let now = self.clock.now_ms();
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
