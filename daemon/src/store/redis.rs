//! Redis store: shared by every node of a cluster.
//!
//! Queue keys share one hash tag (`{prefix}`) so every multi-key step is one
//! server-side script, atomic and one round trip, also on Redis Cluster.
//! Leases are a sorted set scored by their deadline: a node that dies simply
//! stops settling, and the next `lease` call of any node moves the expired
//! entries back to the ready set.

use super::{
    Disposition, MessageMeta, MessageStatus, NewMessage, QueueEntry, RecipientStatus, Result,
    Write, decode, encode,
};
use crate::net::now_ms;
use redis::AsyncCommands;
use redis::Script;
use redis::aio::ConnectionManager;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::read_cache::{Read, ReadCache};
use super::reservations::{IDLE_RETURN, MAX_GRANT, Reservations, SHARE_DIVISOR, Withdrawn};
use super::{BatchOp, BatchValue, OpRef, prefixed_into};

/// How often unused reserved units go back and old reads are dropped.
const COUNTER_SWEEP: Duration = Duration::from_millis(250);

const ENQUEUE: &str = r#"
-- KEYS: ready, entries, pending, body, status
-- ARGV: ready_at, msg_id, body, meta, retention, then (key, entry, idx, status)*
redis.call('SET', KEYS[4], ARGV[3])
-- An empty entry is a recipient that is final already (dropped): status only.
local groups = (#ARGV - 5) / 4
local n = 0
redis.call('HSET', KEYS[5], 'meta', ARGV[4])
for i = 0, groups - 1 do
  local b = 6 + i * 4
  if ARGV[b + 1] ~= '' then
    redis.call('HSET', KEYS[2], ARGV[b], ARGV[b + 1])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[b])
    n = n + 1
  end
  redis.call('HSET', KEYS[5], ARGV[b + 2], ARGV[b + 3])
end
redis.call('HSET', KEYS[3], ARGV[2], n)
redis.call('EXPIRE', KEYS[5], ARGV[5])
return n
"#;

const LEASE: &str = r#"
-- KEYS: ready, leased, entries     ARGV: now, lease_until, max
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, k in ipairs(expired) do
  redis.call('ZREM', KEYS[2], k)
  redis.call('ZADD', KEYS[1], now, k)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then return {} end
for _, k in ipairs(ids) do
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZADD', KEYS[2], ARGV[2], k)
end
return redis.call('HMGET', KEYS[3], unpack(ids))
"#;

const SETTLE: &str = r#"
-- KEYS: leased, ready, entries, pending, body, status
-- ARGV: entry_key, msg_id, idx, status, retention, requeue_entry_or_empty, ready_at
redis.call('HSET', KEYS[6], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[6], ARGV[5])
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[6])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[3], ARGV[1]) == 1 then
  local left = redis.call('HINCRBY', KEYS[4], ARGV[2], -1)
  if left <= 0 then
    redis.call('HDEL', KEYS[4], ARGV[2])
    redis.call('DEL', KEYS[5])
  end
end
return 0
"#;

const RELEASE: &str = r#"
-- KEYS: leased, ready     ARGV: key, ready_at, key, ready_at...
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
  end
end
return 0
"#;

const TAKE: &str = r#"
-- KEYS: counter     ARGV: want, limit, share_divisor, max_grant, ttl_ms
-- Counts at least `want` more against `limit`, and up to a share of what
-- is left under it for the caller to spend later. Answers { units counted
-- (0: refused, nothing counted), the counter's PTTL, its value }.
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local want, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if v + want > limit then return { 0, redis.call('PTTL', KEYS[1]), v } end
local grant = math.floor((limit - v) / tonumber(ARGV[3]))
if grant > tonumber(ARGV[4]) then grant = tonumber(ARGV[4]) end
if grant < want then grant = want end
redis.call('INCRBY', KEYS[1], grant)
redis.call('PEXPIRE', KEYS[1], ARGV[5], 'NX')
return { grant, redis.call('PTTL', KEYS[1]), v + grant }
"#;

const GIVE: &str = r#"
-- KEYS: counter     ARGV: units
-- Units counted and not spent go back; a counter that is gone stays gone.
local v = tonumber(redis.call('GET', KEYS[1]))
if v and v > 0 then
  redis.call('DECRBY', KEYS[1], math.min(v, tonumber(ARGV[1])))
end
return 0
"#;

const INCR: &str = r#"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    retention: Duration,
    enqueue: Script,
    lease: Script,
    settle: Script,
    release: Script,
    incr: Script,
    renew: Script,
    /// Entries this node holds leases on, with the lease length last asked
    /// for; renewed in the background so that an attempt that waits or runs
    /// longer than one lease is not taken over by another node.
    held: std::sync::Mutex<HashSet<String>>,
    lease_ms: std::sync::atomic::AtomicI64,
    /// Units of `take` counters counted in Redis ahead of use.
    reserved: Reservations,
    /// Answers for batches that accept them of bounded age.
    reads: ReadCache,
}

const RENEW: &str = r#"
-- KEYS: leased     ARGV: until, keys...
-- Only entries still leased are renewed: a settled or released entry stays gone.
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i])
end
return n
"#;

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str, retention: Duration) -> Result<Arc<RedisStore>> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
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
            held: std::sync::Mutex::new(HashSet::new()),
            lease_ms: std::sync::atomic::AtomicI64::new(0),
            reserved: Reservations::default(),
            reads: ReadCache::default(),
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
        Ok(store)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn renew_leases(&self) -> Result<()> {
        let keys: Vec<String> = self.held().iter().cloned().collect();
        let lease_ms = self.lease_ms.load(Ordering::Relaxed);
        for chunk in keys.chunks(1000) {
            let mut inv = self.renew.prepare_invoke();
            inv.key(self.q("leased")).arg(now_ms() + lease_ms);
            for k in chunk {
                inv.arg(k);
            }
            let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        }
        Ok(())
    }

    fn q(&self, name: &str) -> String {
        format!("{{{}}}:q:{name}", self.prefix)
    }

    fn body_key(&self, msg_id: &str) -> String {
        format!("{{{}}}:body:{msg_id}", self.prefix)
    }

    fn status_key(&self, msg_id: &str) -> String {
        format!("{{{}}}:status:{msg_id}", self.prefix)
    }

    fn kv_key(&self, key: &str) -> String {
        format!("{}:kv:{key}", self.prefix)
    }

    fn set_key(&self, set: &str) -> String {
        format!("{}:set:{set}", self.prefix)
    }

    pub async fn enqueue(&self, msg: &NewMessage) -> Result<()> {
        let mut inv = self.enqueue.prepare_invoke();
        inv.key(self.q("ready"))
            .key(self.q("entries"))
            .key(self.q("pending"))
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
            inv.arg(super::entry_key(&msg.id, i))
                .arg("")
                .arg(i)
                .arg(encode(&status));
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    pub async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<QueueEntry>> {
        let now = now_ms();
        self.lease_ms
            .store(lease.as_millis() as i64, Ordering::Relaxed);
        let rows: Vec<Option<Vec<u8>>> = self
            .lease
            .key(self.q("ready"))
            .key(self.q("leased"))
            .key(self.q("entries"))
            .arg(now)
            .arg(now + lease.as_millis() as i64)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().flatten() {
            match decode::<QueueEntry>("queue entry", &row) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!(error = %e, "skipping corrupt queue entry"),
            }
        }
        self.held().extend(out.iter().map(|e| e.key()));
        Ok(out)
    }

    pub async fn next_ready_ms(&self) -> Result<Option<i64>> {
        let first: Vec<(String, f64)> = self
            .conn
            .clone()
            .zrange_withscores(self.q("ready"), 0, 0)
            .await?;
        let leased: Vec<(String, f64)> = self
            .conn
            .clone()
            .zrange_withscores(self.q("leased"), 0, 0)
            .await?;
        Ok(first.into_iter().chain(leased).map(|(_, s)| s as i64).min())
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
        let mut inv = self.settle.prepare_invoke();
        inv.key(self.q("leased"))
            .key(self.q("ready"))
            .key(self.q("entries"))
            .key(self.q("pending"))
            .key(self.body_key(&entry.msg_id))
            .key(self.status_key(&entry.msg_id))
            .arg(entry.key())
            .arg(&entry.msg_id)
            .arg(entry.rcpt_idx)
            .arg(encode(status))
            .arg(self.retention.as_secs().max(1))
            .arg(requeue)
            .arg(ready_at);
        if also.is_empty() {
            let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        } else {
            // One MULTI. The script may be missing (a restarted server):
            // then the rest ran without it, and all of it runs again, which
            // the writes allow (they set, they do not add up).
            let run = |load: bool| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                if load {
                    pipe.load_script(&self.settle).ignore();
                }
                pipe.invoke_script(&inv).ignore();
                self.add_writes(&mut pipe, also);
                pipe
            };
            let first: redis::RedisResult<()> =
                run(false).query_async(&mut self.conn.clone()).await;
            let done = match first {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    run(true).query_async(&mut self.conn.clone()).await
                }
                other => other,
            };
            self.forget_writes(also);
            done?;
        }
        self.held().remove(&entry.key());
        Ok(())
    }

    pub async fn record_status(
        &self,
        msg_id: &str,
        idx: u32,
        status: &RecipientStatus,
        also: &[Write],
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.status_key(msg_id), idx, encode(status))
            .ignore();
        self.add_writes(&mut pipe, also);
        let done: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
        self.forget_writes(also);
        Ok(done?)
    }

    pub async fn write(&self, writes: &[Write]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_writes(&mut pipe, writes);
        let done: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
        self.forget_writes(writes);
        Ok(done?)
    }

    /// This node's copies of what `writes` changed are dropped once the
    /// change is in Redis (or may be: also after an error), so reads of
    /// bounded age see this node's own writes.
    fn forget_writes(&self, writes: &[Write]) {
        for w in writes {
            match w {
                Write::Put { key, .. } | Write::Delete(key) => self.reads.forget_key(key),
                Write::SetAdd { set, member, .. } | Write::SetRemove { set, member } => {
                    self.reads.forget_member(set, member)
                }
            }
        }
    }

    /// `writes` as commands, their replies ignored. Set members carry their
    /// own deadline as the score (+inf = no expiry), since Redis sets have
    /// no per-member TTL; adding one also drops the expired ones.
    fn add_writes(&self, pipe: &mut redis::Pipeline, writes: &[Write]) {
        let now = now_ms();
        for w in writes {
            match w {
                Write::Put { key, value, ttl } => {
                    let key = self.kv_key(key);
                    match ttl {
                        Some(t) => pipe.pset_ex(key, value, t.as_millis().max(1) as u64),
                        None => pipe.set(key, value),
                    }
                    .ignore();
                }
                Write::Delete(key) => {
                    pipe.del(self.kv_key(key)).ignore();
                }
                Write::SetAdd { set, member, ttl } => {
                    let key = self.set_key(set);
                    let score = ttl.map_or(f64::INFINITY, |t| (now + t.as_millis() as i64) as f64);
                    pipe.zrembyscore(&key, "-inf", now)
                        .ignore()
                        .zadd(&key, member, score)
                        .ignore();
                }
                Write::SetRemove { set, member } => {
                    pipe.zrem(self.set_key(set), member).ignore();
                }
            }
        }
    }

    pub async fn release(&self, entries: &[QueueEntry]) -> Result<()> {
        let now = now_ms();
        self.release_at(entries, |_| now).await
    }

    /// Gives leased entries back, each due at its `ready_at_ms`.
    pub async fn park(&self, entries: &[QueueEntry]) -> Result<()> {
        self.release_at(entries, |e| e.ready_at_ms).await
    }

    async fn release_at(
        &self,
        entries: &[QueueEntry],
        at: impl Fn(&QueueEntry) -> i64,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut inv = self.release.prepare_invoke();
        inv.key(self.q("leased")).key(self.q("ready"));
        for e in entries {
            inv.arg(e.key()).arg(at(e));
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut held = self.held();
        for e in entries {
            held.remove(&e.key());
        }
        Ok(())
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

    pub async fn queue_len(&self) -> Result<u64> {
        Ok(self.conn.clone().hlen(self.q("entries")).await?)
    }

    pub async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        let done = self
            .incr
            .key(self.kv_key(key))
            .arg(by)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await;
        self.reads.forget_key(key);
        Ok(done?)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.clone().get(self.kv_key(key)).await?)
    }

    pub async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.write(&[Write::Put {
            key: key.to_string(),
            value: value.to_vec(),
            ttl,
        }])
        .await
    }

    pub async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
        let done = self.conn.clone().set_nx(self.kv_key(key), value).await;
        self.reads.forget_key(key);
        Ok(done?)
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let done: redis::RedisResult<i64> = self.conn.clone().del(self.kv_key(key)).await;
        self.reads.forget_key(key);
        Ok(done? > 0)
    }

    pub async fn set_add(&self, set: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        self.write(&[Write::SetAdd {
            set: set.to_string(),
            member: member.to_string(),
            ttl,
        }])
        .await
    }

    pub async fn set_contains(&self, set: &str, member: &str) -> Result<bool> {
        let score: Option<f64> = self.conn.clone().zscore(self.set_key(set), member).await?;
        Ok(score.is_some_and(|s| s > now_ms() as f64))
    }

    pub async fn set_remove(&self, set: &str, member: &str) -> Result<bool> {
        let done: redis::RedisResult<i64> = self.conn.clone().zrem(self.set_key(set), member).await;
        self.reads.forget_member(set, member);
        Ok(done? > 0)
    }

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
    async fn ask_redis(
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
        let bad = |e: redis::ParsingError| super::StoreError::Corrupt {
            key: "batch reply".into(),
            reason: e.to_string(),
        };
        let now_wall = now_ms() as f64;
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
    fn give_cmd<'p>(
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
    async fn give_back(&self, units: &[(String, i64)]) -> Result<()> {
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

    /// Gives back every reserved unit: for a node that stops.
    pub async fn close(&self) {
        let all = self.reserved.all(Instant::now());
        if let Err(e) = self.give_back(&all).await {
            tracing::warn!(error = %e, "returning reserved counter units at shutdown failed");
        }
    }

    pub async fn set_members(&self, set: &str) -> Result<Vec<String>> {
        Ok(self
            .conn
            .clone()
            .zrangebyscore(self.set_key(set), format!("({}", now_ms()), "+inf")
            .await?)
    }
}

/// An operation of a batch that needs Redis, by its position in the batch.
enum Remote {
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
    fn at(&self) -> usize {
        match self {
            Remote::Read(at, _) | Remote::Incr(at) | Remote::Give(at) | Remote::Take { at, .. } => {
                *at
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_testkit::redis::RedisServer;

    async fn node(redis: &RedisServer) -> Arc<RedisStore> {
        let url = format!("redis://127.0.0.1:{}/", redis.port);
        RedisStore::connect(&url, "t", Duration::from_secs(3600))
            .await
            .expect("connect")
    }

    fn take(key: &str, amount: i64, limit: i64) -> BatchOp {
        BatchOp::Take {
            key: key.into(),
            amount,
            ttl: Duration::from_secs(60),
            limit,
            hold_at_most: MAX_GRANT,
        }
    }

    async fn counted(redis: &RedisServer, key: &str) -> i64 {
        let url = format!("redis://127.0.0.1:{}/", redis.port);
        let mut c = redis::Client::open(url)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let v: Option<i64> = c.get(format!("t:kv:{key}")).await.expect("get");
        v.unwrap_or(0)
    }

    async fn took(store: &RedisStore, op: BatchOp) -> bool {
        match store.batch(&[op], Duration::ZERO).await.expect("batch")[..] {
            [BatchValue::Bool(b)] => b,
            ref other => panic!("unexpected answer {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_taking_at_once_spend_exactly_the_limit() {
        let redis = RedisServer::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let spend = |s: Arc<RedisStore>| async move {
            let mut n = 0;
            while took(&s, take("day", 1, 5000)).await {
                n += 1;
            }
            n
        };
        let (from_a, from_b) = tokio::join!(
            tokio::spawn(spend(a.clone())),
            tokio::spawn(spend(b.clone()))
        );
        let (from_a, from_b) = (from_a.expect("a"), from_b.expect("b"));
        assert_eq!(from_a + from_b, 5000, "a {from_a}, b {from_b}");
        assert!(from_a > 0 && from_b > 0, "a {from_a}, b {from_b}");
        assert_eq!(counted(&redis, "day").await, 5000);
        // Most takes were answered from reserved units, not by Redis.
        assert!(!took(&a, take("day", 1, 5000)).await);
    }

    #[tokio::test]
    async fn near_the_limit_every_unit_is_asked_for() {
        let redis = RedisServer::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        for i in 0..5 {
            let store = if i % 2 == 0 { &a } else { &b };
            assert!(took(store, take("rate", 1, 5)).await, "take {i}");
            assert_eq!(counted(&redis, "rate").await, i + 1, "nothing held back");
        }
        assert!(!took(&a, take("rate", 1, 5)).await);
        assert!(!took(&b, take("rate", 1, 5)).await);
        // Nothing is held near a limit, so what is given back is in Redis
        // at once, for any node to take.
        let give = BatchOp::Give {
            key: "rate".into(),
            amount: 2,
        };
        assert!(took(&a, give).await);
        assert_eq!(counted(&redis, "rate").await, 3);
        assert!(took(&b, take("rate", 2, 5)).await);
        assert!(!took(&a, take("other", 6, 5)).await, "more than the limit");
        assert_eq!(
            counted(&redis, "other").await,
            0,
            "a refusal counts nothing"
        );
        assert!(took(&a, take("other", 0, 5)).await, "nothing always fits");
    }

    /// `batch_local` answers a batch entirely on this node, or does
    /// nothing at all and leaves it to `batch`.
    #[tokio::test]
    async fn a_batch_is_answered_here_whole_or_not_at_all() {
        let redis = RedisServer::start();
        let a = node(&redis).await;
        let age = Duration::from_secs(1);
        let take_here = |key, amount| OpRef::Take {
            key,
            amount,
            ttl: Duration::from_secs(60),
            limit: 4000,
            hold_at_most: MAX_GRANT,
        };
        assert_eq!(
            a.batch_local(&[take_here("k", 1)], "p:", age),
            None,
            "nothing held"
        );
        // Units held ahead for p:k after a few takes through Redis.
        for _ in 0..8 {
            assert!(took(&a, take("p:k", 1, 4000)).await);
        }
        let (_, held) = a.held_ahead();
        assert!(held >= 2, "{held}");
        let in_redis = counted(&redis, "p:k").await;
        // One operation that needs Redis (an unread key, an increment, two
        // takes of one counter): nothing is spent.
        for ops in [
            vec![take_here("k", 1), OpRef::Get("unread")],
            vec![
                take_here("k", 1),
                OpRef::Incr("n", 1, Duration::from_secs(60)),
            ],
            vec![take_here("k", 1), take_here("k", 1)],
            vec![take_here("k", held + 1)],
        ] {
            assert_eq!(a.batch_local(&ops, "p:", age), None, "{ops:?}");
            assert_eq!(a.held_ahead().1, held, "{ops:?} spent nothing");
        }
        // Held units and a read kept a moment ago: answered here, spent.
        a.batch(&[BatchOp::Get("p:seen".into())], age)
            .await
            .expect("read");
        let answered = a.batch_local(&[take_here("k", 2), OpRef::Get("seen")], "p:", age);
        assert_eq!(
            answered,
            Some(vec![BatchValue::Bool(true), BatchValue::Bytes(None)])
        );
        assert_eq!(a.held_ahead().1, held - 2);
        assert_eq!(counted(&redis, "p:k").await, in_redis, "no round trip");
        // Without an age nothing read is answered here.
        assert_eq!(
            a.batch_local(&[OpRef::Get("seen")], "p:", Duration::ZERO),
            None
        );
    }

    #[tokio::test]
    async fn units_not_spent_go_back_when_idle_and_at_shutdown() {
        let redis = RedisServer::start();
        let a = node(&redis).await;
        // A counter new here is counted exactly; as it keeps being used,
        // grants go further ahead.
        assert!(took(&a, take("idle", 1, 4000)).await);
        assert_eq!(counted(&redis, "idle").await, 1, "nothing held at first");
        // 21 takes: grants of 1, 2, 3, 5, 9 and 17 units, 16 left.
        for _ in 1..21 {
            assert!(took(&a, take("idle", 1, 4000)).await);
        }
        let (_, held) = a.held_ahead();
        assert_eq!(held, 16, "a busy counter has units held ahead");
        assert_eq!(counted(&redis, "idle").await, 21 + held);
        let deadline = Instant::now() + IDLE_RETURN + Duration::from_secs(2);
        while counted(&redis, "idle").await != 21 {
            assert!(Instant::now() < deadline, "idle units did not go back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(a.held_ahead(), (0, 0));

        // `hold` caps what is held, however busy the counter.
        for _ in 0..20 {
            let small = BatchOp::Take {
                key: "small".into(),
                amount: 1,
                ttl: Duration::from_secs(60),
                limit: 1_000_000,
                hold_at_most: 2,
            };
            assert!(took(&a, small).await);
            assert!(a.held_ahead().1 <= 2, "{:?}", a.held_ahead());
        }

        // At a clean stop everything held goes back, a unit given back to
        // what is held too.
        for _ in 0..20 {
            assert!(took(&a, take("busy", 3, 1_000_000)).await);
        }
        let give = BatchOp::Give {
            key: "busy".into(),
            amount: 1,
        };
        assert!(took(&a, give).await);
        a.close().await;
        assert_eq!(counted(&redis, "busy").await, 59, "60 taken, 1 given back");
        assert_eq!(counted(&redis, "small").await, 20);
        assert_eq!(a.held_ahead(), (0, 0));
    }

    #[tokio::test]
    async fn reads_of_bounded_age_see_this_nodes_writes_at_once() {
        let redis = RedisServer::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let age = Duration::from_millis(300);
        let member = |m: &str| BatchOp::Contains("blocklist".into(), m.into());
        let read = |s: Arc<RedisStore>, m: &'static str, age: Duration| async move {
            s.batch(&[member(m)], age).await.expect("batch")[0].clone()
        };
        assert_eq!(read(a.clone(), "x@y", age).await, BatchValue::Bool(false));
        b.set_add("blocklist", "x@y", None).await.expect("add");
        // Another node's write: seen exactly at once, within `age` from a
        // copy read before it.
        assert_eq!(
            read(a.clone(), "x@y", Duration::ZERO).await,
            BatchValue::Bool(true)
        );
        assert_eq!(read(a.clone(), "x@y", age).await, BatchValue::Bool(false));
        tokio::time::sleep(age).await;
        assert_eq!(read(a.clone(), "x@y", age).await, BatchValue::Bool(true));
        // This node's own write is seen at once.
        assert_eq!(read(a.clone(), "z@y", age).await, BatchValue::Bool(false));
        a.set_add("blocklist", "z@y", None).await.expect("add");
        assert_eq!(read(a.clone(), "z@y", age).await, BatchValue::Bool(true));
        a.set_remove("blocklist", "z@y").await.expect("remove");
        assert_eq!(read(a.clone(), "z@y", age).await, BatchValue::Bool(false));
        let get = |s: Arc<RedisStore>| async move {
            s.batch(&[BatchOp::Get("k".into())], age)
                .await
                .expect("batch")[0]
                .clone()
        };
        assert_eq!(get(a.clone()).await, BatchValue::Bytes(None));
        a.put("k", b"v", None).await.expect("put");
        assert_eq!(get(a.clone()).await, BatchValue::Bytes(Some(b"v".to_vec())));
        // A top-up leaves this node a copy of the counter as it left it:
        // another writer's change shows only once that copy is too old.
        let topped = a.batch(&[take("n", 1, 4000)], age).await.expect("batch");
        assert_eq!(topped, [BatchValue::Bool(true)]);
        let count = |s: Arc<RedisStore>, age: Duration| async move {
            s.batch(&[BatchOp::Get("n".into())], age)
                .await
                .expect("batch")[0]
                .clone()
        };
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let _: () = c.set("t:kv:n", 7).await.expect("set");
        assert_eq!(
            count(a.clone(), age).await,
            BatchValue::Bytes(Some(b"1".to_vec()))
        );
        assert_eq!(
            count(a.clone(), Duration::ZERO).await,
            BatchValue::Bytes(Some(b"7".to_vec()))
        );
    }
}
