//! Egress pacing and connection slots in Redis, for every node together:
//! each step one script on one key. Slot holders carry a deadline, renewed
//! in the background while this node holds them, so a node that dies frees
//! its slots within `SLOT_TTL`.

use super::*;
use crate::store::shaping::{Paced, SLOT_TTL};

impl RedisStore {
    fn shape_key(&self, key: &str) -> String {
        format!("{}:shape:{key}", self.prefix)
    }

    pub async fn pace(
        &self,
        key: &str,
        now_us: i64,
        interval_us: i64,
        n: u32,
        within_us: i64,
    ) -> Result<Paced> {
        // Kept a minute past the last time it gave out.
        let ttl_ms = (interval_us * n as i64) / 1000 + 60_000;
        let (granted, at): (i64, i64) = self
            .pace
            .key(self.shape_key(key))
            .arg(now_us)
            .arg(interval_us)
            .arg(n)
            .arg(within_us)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if granted == 1 {
            Paced::Granted(at)
        } else {
            Paced::NotBefore(at)
        })
    }

    pub async fn slot_take(&self, key: &str, holder: &str, limit: u32) -> Result<bool> {
        let now = self.clock.now_ms();
        let took: i64 = self
            .slot_take
            .key(self.shape_key(key))
            .arg(holder)
            .arg(limit)
            .arg(now)
            .arg(now + SLOT_TTL.as_millis() as i64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if took == 1 {
            self.held_slots()
                .insert((key.to_string(), holder.to_string()));
        }
        Ok(took == 1)
    }

    pub async fn slot_give(&self, key: &str, holder: &str) -> Result<()> {
        self.held_slots()
            .remove(&(key.to_string(), holder.to_string()));
        let _: i64 = redis::cmd("ZREM")
            .arg(self.shape_key(key))
            .arg(holder)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Moves the deadline of every slot this node holds.
    pub(super) async fn renew_slots(&self) -> Result<()> {
        let held: Vec<(String, String)> = self.held_slots().iter().cloned().collect();
        if held.is_empty() {
            return Ok(());
        }
        let until = self.clock.now_ms() + SLOT_TTL.as_millis() as i64;
        let mut pipe = redis::pipe();
        for (key, holder) in &held {
            let key = self.shape_key(key);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg(until)
                .arg(holder)
                .ignore()
                .pexpire(&key, SLOT_TTL.as_millis() as i64 * 2)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    fn held_slots(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.held_slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}
