//! The Redis store's server-side scripts: every multi-key step is one of
//! these, atomic and one round trip.

pub(super) const ENQUEUE: &str = r#"
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

pub(super) const LEASE: &str = r#"
-- KEYS: ready, leased, entries     ARGV: now, lease_ms, max
-- Leases run on Redis's clock, one for every node: a node whose clock is
-- ahead, or is stepped forward, must not take what another node (or its
-- own attempts in flight) holds. Due times are the nodes' wall time.
local now = tonumber(ARGV[1])
local t = redis.call('TIME')
local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', server_ms, 'LIMIT', 0, 1000)
for _, k in ipairs(expired) do
  redis.call('ZREM', KEYS[2], k)
  redis.call('ZADD', KEYS[1], now, k)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then return {} end
local lease_until = server_ms + tonumber(ARGV[2])
for _, k in ipairs(ids) do
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZADD', KEYS[2], lease_until, k)
end
return redis.call('HMGET', KEYS[3], unpack(ids))
"#;

pub(super) const SETTLE: &str = r#"
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

pub(super) const RELEASE: &str = r#"
-- KEYS: leased, ready     ARGV: key, ready_at, key, ready_at...
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
  end
end
return 0
"#;

pub(super) const TAKE: &str = r#"
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

pub(super) const GIVE: &str = r#"
-- KEYS: counter     ARGV: units
-- Units counted and not spent go back; a counter that is gone stays gone.
local v = tonumber(redis.call('GET', KEYS[1]))
if v and v > 0 then
  redis.call('DECRBY', KEYS[1], math.min(v, tonumber(ARGV[1])))
end
return 0
"#;

pub(super) const INCR: &str = r#"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"#;

pub(super) const RENEW: &str = r#"
-- KEYS: leased     ARGV: lease_ms, keys...
-- Only entries still leased are renewed: a settled or released entry stays
-- gone. On Redis's clock, as LEASE.
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', until_ms, ARGV[i])
end
return n
"#;

pub(super) const PACE: &str = r#"
-- KEYS: the limit's next free send time (µs)
-- ARGV: now_us, interval_us, n, within_us, ttl_ms
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > tonumber(ARGV[4]) then return {0, tat} end
redis.call('SET', KEYS[1], string.format('%.0f', tat + tonumber(ARGV[2]) * tonumber(ARGV[3])), 'PX', ARGV[5])
return {1, tat}
"#;

pub(super) const SLOT_TAKE: &str = r#"
-- KEYS: the slot set (holder -> deadline)
-- ARGV: holder, limit, now_ms, deadline_ms
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], 60000)
return 1
"#;
