-- Domain reputation: the 20-level daily-limit table and the rules that move a
-- sender domain between levels (raise at once, lower the next day, block for
-- the day). Counters are per domain and calendar day (kiln.day), in the store,
-- so every node of a cluster sees the same numbers.
--
-- Rates are shares of the messages that reached an outcome today
-- (delivered + bounced): messages still in flight count for neither side.
-- Complaint and open rates are shares of the delivered ones.
--
-- Config (policy.lua: config.reputation): levels (the 20 limits),
-- initial_level (1), min_sent_for_penalty (300), and domains, e.g.
-- { ["example.com"] = { level = 8, min_level = 5 } }: `level` is where a
-- domain Kiln has not seen yet starts, `min_level` a floor for a domain it
-- knows (its level is raised to it at once, and never lowered below it).
--
-- Operators steer a domain with `kiln domain set-level | set-quota | reset`
-- (this hook's kinds "set" and "forget"): a level set by an operator is the
-- domain's level from then on, as if the rules had moved it there (a
-- policy's min_level still holds it up); a quota set by an operator
-- replaces the level's daily limit until it is set to 0 or the domain is
-- reset.

local M = { hooks = {} }
local cfg = kiln.settings("reputation", {
  levels = { type = "list", items = "number",
    default = {
      500, 1000, 2000, 5000, 10000, 20000, 40000, 60000, 80000, 100000,
      150000, 200000, 300000, 400000, 500000, 600000, 700000, 800000, 900000, 1000000,
    },
    doc = "the daily limit of each level, from level 1" },
  initial_level = { type = "integer", default = 1, doc = "the level a new sender domain starts at" },
  min_sent_for_penalty = { type = "integer", default = 300,
    doc = "messages a domain sends in a day before it can be lowered or blocked" },
  domains = { type = "map", default = {},
    values = {
      level = { type = "integer", min = 1, max = 20 },
      min_level = { type = "integer", min = 1, max = 20 },
    },
    doc = "known domains: where a new one starts and a floor for one Kiln knows, e.g. { [\"example.com\"] = { level = 8, min_level = 5 } }" },
})

M.LIMITS = cfg.levels
M.INITIAL_LEVEL = cfg.initial_level
M.MIN_SENT = cfg.min_sent_for_penalty
local function valid_level(l)
  return math.type(l) == "integer" and l >= 1 and l <= #M.LIMITS
end
if not valid_level(M.INITIAL_LEVEL) then
  error("config.reputation.initial_level: a level from 1 to " .. #M.LIMITS .. ", got " .. tostring(M.INITIAL_LEVEL), 0)
end
for domain, known in pairs(cfg.domains) do
  for _, k in ipairs({ "level", "min_level" }) do
    if known[k] ~= nil and not valid_level(math.tointeger(known[k])) then
      error("config.reputation.domains[\"" .. domain .. "\"]." .. k .. ": a level from 1 to "
        .. #M.LIMITS .. ", got " .. tostring(known[k]), 0)
    end
  end
end

-- What the counters count (see docs/lua-api.md, hook `reputation`).
M.KINDS = { "sent", "delivered", "bounce", "invalid", "spam", "complaint", "open" }
local KNOWN = {}
for _, k in ipairs(M.KINDS) do KNOWN[k] = true end
local TTL = 3 * 86400

local function counter_key(domain, day, kind)
  return "rep:" .. domain .. ":" .. day .. ":" .. kind
end

local function ratio(n, d)
  if d <= 0 then return 0 end
  return n / d
end

-- The rates the rules use, from a day's counters.
function M.rates(s)
  local final = s.delivered + s.bounce
  return {
    invalid = ratio(s.invalid, final),
    deliverability = ratio(s.delivered, final),
    spam = ratio(s.spam, final),
    complaint = ratio(s.complaint, s.delivered),
    open = ratio(s.open, s.delivered),
  }
end

-- Either quality rule that allows a raise.
function M.good_quality(r)
  local a = r.invalid < 0.05 and r.deliverability > 0.92 and r.spam < 0.025
    and r.complaint < 0.001
  local b = r.deliverability > 0.90 and r.complaint < 0.001 and r.open > 0.50
  return a or b
end

-- Any of the four rules that lower the level tomorrow.
function M.bad_quality(r)
  return r.invalid > 0.09 or r.deliverability < 0.65 or r.spam > 0.05
    or r.complaint > 0.005
end

-- Applies the rules to `st` (level, day, lower_tomorrow, blocked_day) given
-- today's counters `s`. Pure: tests drive it with numbers. Without a single
-- outcome today there is no evidence either way, and nothing changes.
function M.evaluate(st, s)
  if s.delivered + s.bounce == 0 then return st end
  local r = M.rates(s)
  while st.level < #M.LIMITS and s.sent >= 0.7 * M.LIMITS[st.level]
      and M.good_quality(r) do
    st.level = st.level + 1
  end
  if s.sent > M.MIN_SENT then
    if M.bad_quality(r) then st.lower_tomorrow = true end
    if r.invalid > 0.11 or r.spam > 0.15 then st.blocked_day = st.day end
  end
  return st
end

-- A new day: the pending lowering takes effect, the block ends.
function M.roll_over(st, today)
  if st.day ~= today then
    if st.lower_tomorrow then st.level = math.max(1, st.level - 1) end
    st.lower_tomorrow = false
    st.blocked_day = nil
    st.day = today
  end
  return st
end

function M.stats(domain, day)
  local ops = {}
  for i, k in ipairs(M.KINDS) do ops[i] = { "get", counter_key(domain, day, k) } end
  local got = kiln.batch(ops)
  local s = {}
  for i, k in ipairs(M.KINDS) do s[k] = tonumber(got[i]) or 0 end
  return s
end

local function state_key(domain) return "rep:" .. domain .. ":state" end

-- Decoded states by their stored text, so an unchanged record is not
-- decoded again (a per-Lua-state cache; the store stays the truth).
local decoded = {}

-- The state from its stored text (nil: a new domain).
function M.load(domain, today, raw)
  local st
  if raw then
    local cached = decoded[domain]
    if cached and cached.raw == raw then
      st = { level = cached.st.level, day = cached.st.day,
             lower_tomorrow = cached.st.lower_tomorrow, blocked_day = cached.st.blocked_day,
             quota = cached.st.quota }
    else
      st = kiln.json.decode(raw)
      decoded[domain] = { raw = raw, st = { level = st.level, day = st.day,
        lower_tomorrow = st.lower_tomorrow, blocked_day = st.blocked_day, quota = st.quota } }
    end
  else
    local known = cfg.domains[domain]
    st = { level = known and known.level or M.INITIAL_LEVEL, day = today, lower_tomorrow = false }
  end
  -- A state nothing in Kiln writes wrong; if it is (an older policy's
  -- typo), say so and refuse, never read it as "no limit".
  st.level = math.tointeger(st.level)
  if not valid_level(st.level) or (st.quota ~= nil and math.type(st.quota) ~= "integer") then
    decoded[domain] = nil
    error("the reputation state of " .. domain .. " is damaged (" .. tostring(raw)
      .. "): `kiln domain reset " .. domain .. "` or `kiln domain set-level` repairs it", 0)
  end
  local floor = cfg.domains[domain] and cfg.domains[domain].min_level
  if floor and st.level < floor then st.level = floor end
  return M.roll_over(st, today)
end

function M.answer(st, today)
  return {
    level = st.level,
    daily_limit = st.quota or M.LIMITS[st.level],
    blocked = st.blocked_day == today,
    lower_tomorrow = st.lower_tomorrow or false,
    quota = st.quota,
  }
end

-- Whether an event can change the outcome of the rules, so that today's
-- counters need reading. Rates are shares of outcomes: a send changes none
-- of them, and a delivery or an open only improves them, so those events
-- matter only for a raise; the bad events matter once past the penalty
-- threshold; crossing that threshold itself matters too.
function M.needs_evaluation(kind, sent, count, level)
  local can_raise = level < #M.LIMITS and sent >= 0.7 * M.LIMITS[level]
  if kind == "sent" then
    return can_raise or (sent > M.MIN_SENT and sent - count <= M.MIN_SENT)
  end
  if kind == "delivered" or kind == "open" then
    return can_raise
  end
  return sent > M.MIN_SENT
end

local function same(a, b)
  return a.level == b.level and a.day == b.day and a.lower_tomorrow == b.lower_tomorrow
    and a.blocked_day == b.blocked_day and a.quota == b.quota
end

-- Forgets a domain (kind "forget": it was deleted, or proven by another
-- account): its level and the counters of the days they are kept.
function M.forget(domain, now)
  kiln.kv.delete(state_key(domain))
  decoded[domain] = nil
  for back = 0, TTL // 86400 do
    local day = kiln.day(now - back * 86400 * 1000)
    for _, k in ipairs(M.KINDS) do kiln.kv.delete(counter_key(domain, day, k)) end
  end
end

-- An operator's change (kind "set": `level`, and/or `quota`, 0 clearing
-- it); answers the state after it, with today's counts.
function M.set(domain, ev, today)
  local raw = kiln.kv.get(state_key(domain))
  local ok, st = pcall(M.load, domain, today, raw)
  if not ok then
    -- A damaged state is replaced by what the operator says.
    st = { level = M.INITIAL_LEVEL, day = today, lower_tomorrow = false }
  end
  if ev.level ~= nil then
    local level = math.tointeger(ev.level)
    if not valid_level(level) then
      error("a level from 1 to " .. #M.LIMITS .. ", not " .. tostring(ev.level), 0)
    end
    st.level, st.lower_tomorrow = level, false
    local floor = cfg.domains[domain] and cfg.domains[domain].min_level
    if floor and st.level < floor then st.level = floor end
  end
  if ev.quota ~= nil then
    local quota = math.tointeger(ev.quota)
    if not quota or quota < 0 then error("a quota is a whole number of messages, not " .. tostring(ev.quota), 0) end
    st.quota = quota > 0 and quota or nil
  end
  kiln.kv.put(state_key(domain), kiln.json.encode(st))
  decoded[domain] = nil
  local answer = M.answer(st, today)
  answer.today = M.stats(domain, today)
  return answer
end

-- reputation(event): count the event, apply the rules, answer the state.
-- event.kind = "query" only answers; "forget" starts the domain afresh.
function M.hooks.reputation(ev)
  local today = kiln.day(ev.now)
  local domain = string.lower(ev.domain)
  if ev.kind == "forget" then
    M.forget(domain, ev.now)
    return nil
  end
  if ev.kind == "set" then return M.set(domain, ev, today) end
  local counting = ev.kind ~= "query" and ev.kind ~= "show"
  if counting and not KNOWN[ev.kind] then
    error("reputation: unknown event kind " .. tostring(ev.kind))
  end
  -- One round trip: the state, the count, and today's sends.
  local ops = { { "get", state_key(domain) } }
  if counting then
    ops[2] = { "incr", counter_key(domain, today, ev.kind), ev.count or 1, TTL }
    ops[3] = { "get", counter_key(domain, today, "sent") }
  end
  local got = kiln.batch(ops)
  local raw = got[1]
  local st = M.load(domain, today, raw)
  local before = { level = st.level, day = st.day, lower_tomorrow = st.lower_tomorrow,
                   blocked_day = st.blocked_day }
  if counting then
    local sent = ev.kind == "sent" and got[2] or (tonumber(got[3]) or 0)
    if M.needs_evaluation(ev.kind, sent, ev.count or 1, st.level) then
      M.evaluate(st, M.stats(domain, today))
    end
  end
  if raw == nil or not same(st, before) or st.day ~= before.day then
    kiln.kv.put(state_key(domain), kiln.json.encode(st))
  end
  local answer = M.answer(st, today)
  -- "show": what an operator reads, today's counts too.
  if ev.kind == "show" then answer.today = M.stats(domain, today) end
  return answer
end

return M
