-- Warm-up: a new sending identity (a domain, or a source IP) may send a
-- growing amount per day, counted from its first sending day: by default
-- 200, 500, 1,000, 2,000, 5,000, 10,000, then doubling (the limits plugin
-- also caps it at the domain's reputation limit).
--
-- As in the service Kiln reproduces, the curve is built into batch
-- sending: by default it holds back batch tasks only, and trigger-based
-- SendEmail (sign-up codes, receipts) has the reputation level's daily
-- quota alone. `applies_to` names what else it holds back (a trigger type
-- or a scenario, e.g. "marketing").
--
-- Settings (policy.lua: config.warmup): declared below, listed in
-- docs/lua-api.md.

local M = { hooks = {} }
local cfg = kiln.settings("warmup", {
  curve = { type = "list", items = "number", default = { 200, 500, 1000, 2000, 5000, 10000 },
    doc = "the daily cap from an identity's first sending day on; after the last, doubling" },
  identities = { type = "map", default = {},
    values = { curve = { type = "list", items = "number" }, disabled = { type = "boolean" } },
    doc = "per domain or source IP: { curve = {...} } or { disabled = true }" },
  applies_to = { type = "list", items = "string", default = { "batch" },
    doc = "the trigger types (regular, trigger, batch) and scenarios (transactional, notification, marketing) the curve caps; others have only the reputation limit" },
})

M.CURVE = cfg.curve
M.APPLIES_TO = {}
for _, what in ipairs(cfg.applies_to) do M.APPLIES_TO[what] = true end

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

-- warmup_limit(id): id.identity, id.now; answers { cap = n, day = d,
-- applies_to = set } or nil (no cap).
local IDENTITIES = cfg.identities
local DEFAULT = {}

function M.hooks.warmup_limit(id)
  local identity = string.lower(id.identity)
  local own = IDENTITIES[identity] or DEFAULT
  if own.disabled then return nil end
  local sec = id.now // 1000
  local last = answered[identity]
  if last and last.sec == sec then
    return { cap = last.cap, day = last.day, applies_to = M.APPLIES_TO }
  end
  local today = kiln.day(id.now)
  local n = kiln.days_between(first_day(identity, today), today)
  local answer = { cap = M.cap(own.curve or M.CURVE, math.max(0, n)), day = n,
    applies_to = M.APPLIES_TO }
  if known[identity] then answered[identity] = { sec = sec, cap = answer.cap, day = n } end
  return answer
end

return M
