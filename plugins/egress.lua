-- Egress: how mail leaves. Kiln does the sending (connections, pacing,
-- suspensions, the queue); this plugin says what the rules are:
--
--   select_egress(msg)    the pool a message leaves from: by account, by
--                         sender domain, else by scenario (a pool named
--                         after it), else the default pool
--   egress_plan()         sources, pools, providers and their limits, read
--                         once per load: the shipped egress/providers.toml
--                         with config.egress over it
--   egress_signal(reply)  whether a refusal says "slow down", and what to
--                         do: config.egress.signals, then the shipped
--                         egress/signals.toml, first match wins
--
-- Settings (policy.lua: config.egress): declared below, listed in
-- docs/lua-api.md. Sources and pools, e.g.
--   sources = { a = { address = "192.0.2.20", ehlo = "mta-a.example.com" },
--               b = { address = "192.0.2.21", ehlo = "mta-b.example.com", warmup = true } },
--   pools = { marketing = { "a", { source = "b", weight = 2 } },
--             transactional = { "192.0.2.10" } },   -- an address is a source too

local M = { hooks = {} }
local cfg = kiln.settings("egress", {
  sources = { type = "table", default = {},
    doc = "named source addresses: { a = { address = \"192.0.2.20\", ehlo = \"mta-a.example.com\", warmup = true } }" },
  pools = { type = "table", default = {},
    doc = "pools of sources (names or addresses, or { source = name, weight = n }); a scenario's pool has its name, `default` is used otherwise" },
  accounts = { type = "map", values = "string", default = {},
    doc = "a pool per account: { acme = \"marketing\" }" },
  domains = { type = "map", values = "string", default = {},
    doc = "a pool per sender domain: { [\"news.example.com\"] = \"marketing\" }" },
  providers = { type = "table", default = {},
    doc = "over egress/providers.toml: { gmail = { connections = 5 }, myisp = { mx = { \"myisp.example\" }, per_minute = 600 } }" },
  defaults = { type = "table", default = {},
    doc = "limits of a site (a destination that is no provider's), over the file's [defaults]" },
  signals = { type = "list", items = "table", default = {},
    doc = "throttling rules tried before egress/signals.toml's, e.g. { name = \"isp-slow\", text = \"slow down\", suspend = \"5m\" }" },
})

local LIMITS = { connections = "integer", messages_per_connection = "integer",
  per_second = "number", per_minute = "number", per_hour = "number",
  new_connections_per_minute = "number" }

local function fail(where, what)
  error("egress: " .. where .. ": " .. what, 0)
end

-- A provider's or the defaults' limits, checked: a misspelt limit is no
-- silent no-op.
local function limits(where, t, into)
  into = into or {}
  for k, v in pairs(t) do
    if k ~= "mx" then
      local kind = LIMITS[k]
      if not kind then fail(where, "unknown limit " .. tostring(k)) end
      if type(v) ~= "number" or v <= 0 or (kind == "integer" and v % 1 ~= 0) then
        fail(where, k .. " must be a positive " .. kind)
      end
      into[k] = v
    end
  end
  return into
end

local function merged_providers()
  local file, shown = kiln.data("egress/providers")
  local defaults = limits(shown .. " [defaults]", file.defaults or {})
  limits("config.egress.defaults", cfg.defaults, defaults)
  local by_name = {}
  for name, p in pairs(file.providers or {}) do
    by_name[name] = { mx = p.mx, limits = limits(shown .. " [providers." .. name .. "]", p) }
  end
  for name, p in pairs(cfg.providers) do
    if type(p) ~= "table" then fail("config.egress.providers." .. name, "expected a table") end
    local into = by_name[name] or { limits = {} }
    if p.mx then into.mx = p.mx end
    limits("config.egress.providers." .. name, p, into.limits)
    by_name[name] = into
  end
  local list = {}
  for name, p in pairs(by_name) do
    if type(p.mx) ~= "table" or #p.mx == 0 then
      fail("provider " .. name, "needs mx = { \"suffix\", ... }")
    end
    local entry = { name = name, mx = p.mx }
    for k, v in pairs(p.limits) do entry[k] = v end
    list[#list + 1] = entry
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return defaults, list
end

local function plan()
  local defaults, providers = merged_providers()
  local sources = {}
  for name, s in pairs(cfg.sources) do
    if type(s) ~= "table" then fail("config.egress.sources." .. name, "expected a table") end
    for k in pairs(s) do
      if k ~= "address" and k ~= "ehlo" and k ~= "warmup" then
        fail("config.egress.sources." .. name, "unknown field " .. tostring(k))
      end
    end
    sources[#sources + 1] = { name = name, address = s.address, ehlo = s.ehlo, warmup = s.warmup == true }
  end
  table.sort(sources, function(a, b) return a.name < b.name end)
  local pools = {}
  for name, members in pairs(cfg.pools) do
    if type(members) ~= "table" then fail("config.egress.pools." .. name, "expected a list") end
    local list = {}
    for _, m in ipairs(members) do
      if type(m) == "string" then
        list[#list + 1] = { source = m, weight = 1 }
      elseif type(m) == "table" and type(m.source) == "string" then
        list[#list + 1] = { source = m.source, weight = m.weight or 1 }
      else
        fail("config.egress.pools." .. name, "a member is a source name, an address or { source = ..., weight = n }")
      end
    end
    pools[name] = list
  end
  return { defaults = defaults, providers = providers, sources = sources, pools = pools }
end

-- Built once per load: the data does not change until the next one.
local PLAN = plan()
function M.hooks.egress_plan() return PLAN end

-- Durations as the data files write them: "90s", "10m", "1h", or seconds.
local function seconds(where, v)
  if v == nil then return nil end
  if type(v) == "number" then return v end
  local n, unit = string.match(tostring(v), "^(%d+)([smhd]?)$")
  if not n then fail(where, "bad duration " .. tostring(v)) end
  return tonumber(n) * ({ [""] = 1, s = 1, m = 60, h = 3600, d = 86400 })[unit]
end

local RULE_FIELDS = { name = true, code = true, enhanced = true, text = true,
  text_pattern = true, stage = true, suspend = true, factor = true,
  recover = true, other_source = true, retry = true, bounce = true }

local function rule(where, r)
  for k in pairs(r) do
    if not RULE_FIELDS[k] then fail(where, "unknown field " .. tostring(k)) end
  end
  if type(r.name) ~= "string" then fail(where, "needs a name") end
  if not (r.code or r.enhanced or r.text or r.text_pattern) then
    fail(where, "matches nothing (give code, enhanced, text or text_pattern)")
  end
  if r.retry and r.bounce then fail(where, "retry and bounce contradict each other") end
  if r.factor and (type(r.factor) ~= "number" or r.factor <= 0 or r.factor > 1) then
    fail(where, "factor must be in (0, 1]")
  end
  if r.enhanced then string.find("", r.enhanced) end -- a bad pattern fails the load
  if r.text_pattern then string.find("", r.text_pattern) end
  return {
    name = r.name, code = r.code, enhanced = r.enhanced and ("^" .. r.enhanced .. "$"),
    text = r.text and string.lower(r.text), text_pattern = r.text_pattern, stage = r.stage,
    answer = { rule = r.name, suspend_s = seconds(where, r.suspend), factor = r.factor,
      recover_s = seconds(where, r.recover), other_source = r.other_source == true,
      retry = r.retry == true, bounce = r.bounce == true },
  }
end

local RULES = {}
for i, r in ipairs(cfg.signals) do
  RULES[#RULES + 1] = rule("config.egress.signals[" .. i .. "]", r)
end
do
  local file, shown = kiln.data("egress/signals")
  for i, r in ipairs(file.signal or {}) do
    RULES[#RULES + 1] = rule(shown .. " signal " .. i, r)
  end
end

-- egress_signal(reply): reply.code, reply.enhanced_code, reply.text,
-- reply.stage, reply.provider, reply.source; answers the first matching
-- rule's action, or nil.
function M.hooks.egress_signal(reply)
  local lower
  for _, r in ipairs(RULES) do
    local ok = (not r.code or r.code == reply.code)
      and (not r.stage or r.stage == reply.stage)
      and (not r.enhanced or string.find(reply.enhanced_code, r.enhanced) ~= nil)
      and (not r.text_pattern or string.find(reply.text, r.text_pattern) ~= nil)
    if ok and r.text then
      lower = lower or string.lower(reply.text)
      ok = string.find(lower, r.text, 1, true) ~= nil
    end
    if ok then return r.answer end
  end
  return nil
end

-- The pool for a message: its account's, its sender domain's, else its
-- scenario's (a pool of that name), else none (the default pool).
local ACCOUNTS, DOMAINS, POOLS = cfg.accounts, cfg.domains, cfg.pools

function M.select(msg)
  local pool = ACCOUNTS[msg.account] or DOMAINS[msg.sender_domain]
  if pool then return { pool = pool } end
  local scenario = msg.scenario ~= "" and msg.scenario or "transactional"
  if POOLS[scenario] then return { pool = scenario } end
  return nil
end

-- With no pools there is nothing to choose: the hook is not defined at
-- all, so it costs nothing per message.
if next(POOLS) then M.hooks.select_egress = M.select end

return M
