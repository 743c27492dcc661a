//! Keys, sets, counters and writes in Redis.

use super::*;

impl RedisStore {
    /// `writes` in one MULTI; on a cluster, where one cannot span slots,
    /// each key's write is atomic on its own.
    pub async fn write(&self, writes: &[Write]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !self.conn.is_cluster() {
            pipe.atomic();
        }
        self.add_writes(&mut pipe, writes);
        let done: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
        self.forget_writes(writes);
        Ok(done?)
    }

    /// This node's copies of what `writes` changed are dropped once the
    /// change is in Redis (or may be: also after an error), so reads of
    /// bounded age see this node's own writes.
    pub(super) fn forget_writes(&self, writes: &[Write]) {
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
    pub(super) fn add_writes(&self, pipe: &mut redis::Pipeline, writes: &[Write]) {
        let now = self.clock.now_ms();
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
        Ok(score.is_some_and(|s| s > self.clock.now_ms() as f64))
    }

    pub async fn set_remove(&self, set: &str, member: &str) -> Result<bool> {
        let done: redis::RedisResult<i64> = self.conn.clone().zrem(self.set_key(set), member).await;
        self.reads.forget_member(set, member);
        Ok(done? > 0)
    }

    pub async fn set_members(&self, set: &str) -> Result<Vec<String>> {
        Ok(self
            .conn
            .clone()
            .zrangebyscore(
                self.set_key(set),
                format!("({}", self.clock.now_ms()),
                "+inf",
            )
            .await?)
    }
}
