-- Warm-up: a new sending identity (a domain, or a source IP) may send a
-- growing amount per day, counted from its first sending day: by default
-- 200, 500, 1,000, 2,000, 5,000, 10,000, then doubling (the limits plugin
-- also caps it at the domain's reputation limit).
--
-- Config (policy.lua: config.warmup):
--   curve = { ... }                      the default curve
--   identities = { ["example.com"] = { curve = {...} } or { disabled = true } }

local M = { hooks = {} }
local cfg = kiln.config("warmup")

M.CURVE = cfg.curve or { 200, 500, 1000, 2000, 5000, 10000 }

-- The cap on day `n` (0 = the first sending day) of a curve.
function M.cap(curve, n)
  if n < #curve then return curve[n + 1] end
  local cap = curve[#curve]
  for _ = #curve, n do cap = cap * 2 end
  return cap
end

-- First sending days never change once set: remembered per Lua state.
local known = {}

local function first_day(identity, today)
  if known[identity] then return known[identity] end
  local key = "warmup:" .. identity .. ":first_day"
  local day = kiln.kv.get(key)
  if day then known[identity] = day end
  if day then return day end
  kiln.kv.put_if_absent(key, today)
  return kiln.kv.get(key) or today
end

-- The answer for an identity, kept for the second it was given in: it
-- changes once a day (days start on a whole second), and the hook runs for
-- every message.
local answered = {}

-- warmup_limit(id): id.identity, id.now; answers { cap = n } or nil (no cap).
local IDENTITIES = cfg.identities or {}
local DEFAULT = {}

function M.hooks.warmup_limit(id)
  local identity = string.lower(id.identity)
  local own = IDENTITIES[identity] or DEFAULT
  if own.disabled then return nil end
  local sec = id.now // 1000
  local last = answered[identity]
  if last and last.sec == sec then return { cap = last.cap, day = last.day } end
  local today = kiln.day(id.now)
  local n = kiln.days_between(first_day(identity, today), today)
  local answer = { cap = M.cap(own.curve or M.CURVE, math.max(0, n)), day = n }
  if known[identity] then answered[identity] = { sec = sec, cap = answer.cap, day = n } end
  return answer
end

return M
