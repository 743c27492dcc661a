//! Batches in Redis: answered on this node when every operation can be
//! (units held ahead, reads of bounded age), else in one pipeline.

use super::*;

impl RedisStore {
    /// The whole batch answered on this node without waiting, or None,
    /// having done nothing, when any operation needs Redis. `kiln.batch`
    /// tries this first: most messages' batches are answered here, and a
    /// call that never waits costs less than one that may.
    pub fn batch_local(
        &self,
        ops: &[OpRef<'_>],
        prefix: &str,
        max_age: Duration,
    ) -> Option<Vec<BatchValue>> {
        let now = Instant::now();
        let full = |buf: &mut String, k: &str| prefixed_into(buf, prefix, k);
        // Two takes or gives of one counter would have to be checked
        // together: such a batch goes the usual way.
        fn counted<'k>(op: &OpRef<'k>) -> Option<&'k str> {
            match op {
                OpRef::Take { key, .. } | OpRef::Give { key, .. } => Some(*key),
                _ => None,
            }
        }
        for (i, a) in ops.iter().enumerate() {
            if let Some(k) = counted(a)
                && ops[i + 1..].iter().any(|b| counted(b) == Some(k))
            {
                return None;
            }
        }
        let reads = (!max_age.is_zero()).then(|| self.reads.entries());
        let mut ledger = self.reserved.ledger();
        let mut buf = String::new();
        let mut out = Vec::with_capacity(ops.len());
        // First every answer, changing nothing; then the counts.
        for op in ops {
            let answer = match op {
                OpRef::Get(k) => {
                    full(&mut buf, k);
                    reads.as_ref()?.key(&buf, max_age, now)?
                }
                OpRef::Contains(set, m) => {
                    full(&mut buf, set);
                    reads.as_ref()?.member(&buf, m, max_age, now)?
                }
                OpRef::Incr(..) => return None,
                OpRef::Take { key, amount, .. } => {
                    full(&mut buf, key);
                    ledger
                        .can_spend(&buf, *amount, now)
                        .then_some(BatchValue::Bool(true))?
                }
                OpRef::Give { key, amount } => {
                    full(&mut buf, key);
                    ledger
                        .can_give(&buf, *amount, now)
                        .then_some(BatchValue::Bool(true))?
                }
            };
            out.push(answer);
        }
        for op in ops {
            match op {
                OpRef::Take { key, amount, .. } if *amount > 0 => {
                    full(&mut buf, key);
                    ledger.spend(&buf, *amount, now);
                }
                OpRef::Give { key, amount } => {
                    full(&mut buf, key);
                    ledger.give(&buf, *amount, now);
                }
                _ => {}
            }
        }
        Some(out)
    }

    /// Answers what it can on this node (reads of bounded age, takes from
    /// reserved units, gives), the rest in one pipeline: GET, ZSCORE (a
    /// set member's expiry), INCRBY with PEXPIRE NX (the window starts at
    /// the first increment; Redis 7), and a script per take to reserve.
    pub async fn batch(&self, ops: &[BatchOp], max_age: Duration) -> Result<Vec<BatchValue>> {
        let now = Instant::now();
        let cached = !max_age.is_zero();
        let mut out: Vec<BatchValue> = Vec::with_capacity(ops.len());
        let mut remote: Vec<Remote> = Vec::new();
        {
            // One lock of each for the whole batch, not one per operation.
            let reads = cached.then(|| self.reads.entries());
            let reads = reads.as_deref();
            let mut ledger = self.reserved.ledger();
            for (i, op) in ops.iter().enumerate() {
                let local = match op {
                    BatchOp::Get(k) => {
                        let hit = reads.and_then(|r| r.key(k, max_age, now));
                        if hit.is_none() {
                            remote.push(Remote::Read(i, Read::Key(k.clone())));
                        }
                        hit
                    }
                    BatchOp::Contains(set, m) => {
                        let hit = reads.and_then(|r| r.member(set, m, max_age, now));
                        if hit.is_none() {
                            remote.push(Remote::Read(i, Read::Member(set.clone(), m.clone())));
                        }
                        hit
                    }
                    BatchOp::Incr(..) => {
                        remote.push(Remote::Incr(i));
                        None
                    }
                    BatchOp::Take { key, amount, .. } => {
                        if *amount <= 0 || ledger.spend(key, *amount, now) {
                            Some(BatchValue::Bool(true))
                        } else {
                            let held = ledger.withdraw(key, now);
                            remote.push(Remote::Take { at: i, held });
                            None
                        }
                    }
                    BatchOp::Give { key, amount } => {
                        if ledger.give(key, *amount, now) {
                            Some(BatchValue::Bool(true))
                        } else {
                            remote.push(Remote::Give(i));
                            None
                        }
                    }
                };
                // A placeholder where Redis answers below.
                out.push(local.unwrap_or(BatchValue::Bool(false)));
            }
        }
        if remote.is_empty() {
            return Ok(out);
        }
        match self.ask_redis(ops, &remote, cached).await {
            Ok(answers) => {
                for (at, v) in answers {
                    out[at] = v;
                }
                Ok(out)
            }
            Err(e) => {
                // Units withdrawn for a top-up that never came are still
                // this node's.
                for r in &remote {
                    if let Remote::Take { at, held } = r
                        && let BatchOp::Take { key, .. } = &ops[*at]
                    {
                        self.reserved.hold(key, *held, now);
                    }
                }
                Err(e)
            }
        }
    }

    /// The operations `remote` names, in one pipeline; answers by position.
    /// `keep`: what is read is kept for reads of bounded age.
    pub(super) async fn ask_redis(
        &self,
        ops: &[BatchOp],
        remote: &[Remote],
        keep: bool,
    ) -> Result<Vec<(usize, BatchValue)>> {
        let mut pipe = redis::pipe();
        for r in remote {
            match r {
                Remote::Read(_, Read::Key(key)) => {
                    pipe.get(self.kv_key(key));
                }
                Remote::Read(_, Read::Member(set, m)) => {
                    pipe.zscore(self.set_key(set), m);
                }
                Remote::Incr(at) => {
                    if let BatchOp::Incr(k, by, ttl) = &ops[*at] {
                        let key = self.kv_key(k);
                        pipe.incr(&key, *by);
                        pipe.cmd("PEXPIRE")
                            .arg(&key)
                            .arg(ttl.as_millis().max(1) as u64)
                            .arg("NX")
                            .ignore();
                    }
                }
                Remote::Give(at) => {
                    if let BatchOp::Give { key, amount } = &ops[*at] {
                        self.give_cmd(&mut pipe, key, *amount);
                    }
                }
                Remote::Take { at, held, .. } => {
                    if let BatchOp::Take {
                        key,
                        amount,
                        ttl,
                        limit,
                        hold_at_most,
                    } = &ops[*at]
                    {
                        let want = amount - held.left;
                        let ahead = (*hold_at_most).min(held.ahead).clamp(0, MAX_GRANT);
                        pipe.cmd("EVAL")
                            .arg(TAKE)
                            .arg(1)
                            .arg(self.kv_key(key))
                            .arg(want)
                            .arg(*limit)
                            .arg(SHARE_DIVISOR)
                            .arg(want.saturating_add(ahead))
                            .arg(ttl.as_millis().max(1) as u64);
                    }
                }
            }
        }
        // A copy is kept only if no write of this node lands in between
        // (see `ReadCache::put`).
        let generation = self.reads.generation();
        let sent: redis::RedisResult<Vec<redis::Value>> =
            pipe.query_async(&mut self.conn.clone()).await;
        for r in remote {
            match (r, &ops[r.at()]) {
                (Remote::Incr(_), BatchOp::Incr(key, ..))
                | (Remote::Give(_), BatchOp::Give { key, .. }) => self.reads.forget_key(key),
                // A take's key is settled with its answer below.
                (Remote::Take { .. }, BatchOp::Take { key, .. }) if sent.is_err() => {
                    self.reads.forget_key(key)
                }
                _ => {}
            }
        }
        let values = sent?;
        let bad = |e: redis::ParsingError| crate::store::StoreError::Corrupt {
            key: "batch reply".into(),
            reason: e.to_string(),
        };
        let now_wall = self.clock.now_ms() as f64;
        let now = Instant::now();
        let mut out = Vec::with_capacity(remote.len());
        for (r, v) in remote.iter().zip(values) {
            match r {
                Remote::Read(at, read) => {
                    let value = match read {
                        Read::Key(_) => BatchValue::Bytes(redis::from_redis_value(v).map_err(bad)?),
                        Read::Member(..) => {
                            let score: Option<f64> = redis::from_redis_value(v).map_err(bad)?;
                            BatchValue::Bool(score.is_some_and(|s| s > now_wall))
                        }
                    };
                    if keep {
                        self.reads.put(read.clone(), &value, now, generation);
                    }
                    out.push((*at, value));
                }
                Remote::Incr(at) => {
                    out.push((
                        *at,
                        BatchValue::Int(redis::from_redis_value(v).map_err(bad)?),
                    ));
                }
                Remote::Give(at) => out.push((*at, BatchValue::Bool(true))),
                Remote::Take { at, held } => {
                    let (granted, pttl, value): (i64, i64, i64) =
                        redis::from_redis_value(v).map_err(bad)?;
                    let BatchOp::Take { key, amount, .. } = &ops[*at] else {
                        continue;
                    };
                    // The counter's value as the grant left it, so a read of
                    // bounded age needs no round trip after a top-up; or
                    // no copy, if another write of this node came between.
                    let bytes = BatchValue::Bytes(Some(value.to_string().into_bytes()));
                    if !(keep
                        && self
                            .reads
                            .put(Read::Key(key.clone()), &bytes, now, generation))
                    {
                        self.reads.forget_key(key);
                    }
                    if granted == 0 {
                        self.reserved.hold(key, *held, now);
                        out.push((*at, BatchValue::Bool(false)));
                    } else {
                        // A counter without expiry (-1) keeps its units
                        // until they are spent or idle.
                        let after = Withdrawn {
                            left: held.left + granted - amount,
                            expires: (pttl > 0).then(|| now + Duration::from_millis(pttl as u64)),
                            ahead: held.next_ahead(),
                        };
                        self.reserved.hold(key, after, now);
                        out.push((*at, BatchValue::Bool(true)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The script that hands `units` back to the counter `key`.
    pub(super) fn give_cmd<'p>(
        &self,
        pipe: &'p mut redis::Pipeline,
        key: &str,
        units: i64,
    ) -> &'p mut redis::Pipeline {
        pipe.cmd("EVAL")
            .arg(GIVE)
            .arg(1)
            .arg(self.kv_key(key))
            .arg(units)
    }

    /// Returns reserved units to their counters.
    pub(super) async fn give_back(&self, units: &[(String, i64)]) -> Result<()> {
        for chunk in units.chunks(500) {
            let mut pipe = redis::pipe();
            for (key, n) in chunk {
                self.give_cmd(&mut pipe, key, *n).ignore();
            }
            let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        }
        Ok(())
    }

    /// Counters with units counted ahead of use on this node, and the units.
    pub fn held_ahead(&self) -> (usize, i64) {
        self.reserved.summary(Instant::now())
    }
}

/// An operation of a batch that needs Redis, by its position in the batch.
pub(super) enum Remote {
    Read(usize, Read),
    Incr(usize),
    /// Units given back where none are held.
    Give(usize),
    /// A take beyond the units held here; `held` were withdrawn to go
    /// towards it.
    Take {
        at: usize,
        held: Withdrawn,
    },
}

impl Remote {
    /// The operation's position in its batch.
    pub(super) fn at(&self) -> usize {
        match self {
            Remote::Read(at, _) | Remote::Incr(at) | Remote::Give(at) | Remote::Take { at, .. } => {
                *at
            }
        }
    }
}
