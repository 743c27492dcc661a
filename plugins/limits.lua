-- Sending limits, checked before a message is queued (hook check_limits):
-- size, subject, blocklist, the account's own blocklist and unsubscribes, one recipient at most 10 per
-- hour, per-account rate (20/s) and daily ceiling (300,000), the sender
-- domain's daily quota (its reputation level; for batch tasks, and what
-- else config.warmup.applies_to names, capped by warm-up), and the
-- automatic stop when 8% of an account's mail is to blocklisted addresses.
--
-- Over the daily quota a regular send is refused with
-- FailedOperation.ExceedSendLimit; a batch-task message is deferred to the
-- start of the next day.
--
-- Settings (policy.lua: config.limits): declared below with their
-- defaults, and listed in docs/lua-api.md.

local M = { hooks = {} }
local cfg = kiln.settings("limits", {
  rate_per_second = { type = "number", default = 20, doc = "messages a second per account" },
  account_daily_limit = { type = "number", default = 300000,
    doc = "messages a day per account (the account ceiling)" },
  per_recipient_per_hour = { type = "number", default = 10,
    doc = "messages one recipient may get in an hour" },
  max_size = { type = "integer", default = 4 * 1024 * 1024,
    doc = "the largest message in bytes, attachments included, as sent" },
  max_subject_chars = { type = "integer", default = 998, doc = "the longest subject, in characters" },
  stop_blocklisted_share = { type = "number", default = 0.08,
    doc = "share of a day's mail to blocklisted addresses that stops an account" },
  stop_min_sent = { type = "integer", default = 100,
    doc = "messages an account sends in a day before that share counts" },
  read_age_ms = { type = "integer", default = 1000,
    doc = "how old a blocklist or unsubscribe answer may be on Redis (0: always exact)" },
})

M.RATE = cfg.rate_per_second
M.ACCOUNT_DAILY = cfg.account_daily_limit
M.PER_RECIPIENT_HOUR = cfg.per_recipient_per_hour
M.MAX_SIZE = cfg.max_size
M.MAX_SUBJECT = cfg.max_subject_chars
M.STOP_SHARE = cfg.stop_blocklisted_share
M.STOP_MIN_SENT = cfg.stop_min_sent
M.READ_AGE = cfg.read_age_ms

local DAY_TTL = 2 * 86400
-- The settings and library functions the check uses for every message, as
-- locals (a table lookup each otherwise).
local MAX_SIZE, MAX_SUBJECT, READ_AGE = M.MAX_SIZE, M.MAX_SUBJECT, M.READ_AGE
local STOP_MIN_SENT, STOP_SHARE = M.STOP_MIN_SENT, M.STOP_SHARE
local lower, utf8_len, batch = string.lower, utf8.len, kiln.batch

local function reject(code, smtp, message)
  return { action = "reject", code = code, smtp = smtp, message = message }
end

local function over_quota(msg, what)
  if msg.trigger_type == "batch" then
    return {
      action = "defer",
      retry_at = kiln.next_day_start(msg.now),
      code = "FailedOperation.ExceedSendLimit",
      message = what .. " reached; paused until tomorrow",
    }
  end
  return reject("FailedOperation.ExceedSendLimit",
    "451 4.7.1 " .. what .. " reached, try again tomorrow", what .. " reached")
end

-- Checks that need no counters; returns a refusal or nil.
local function static_checks(msg)
  if msg.size > MAX_SIZE then
    return reject("FailedOperation.EmailContentToolarge",
      "552 5.3.4 Message size exceeds the limit", "message larger than " .. M.MAX_SIZE .. " bytes")
  end
  local chars = msg.subject_valid_utf8 and utf8_len(msg.subject)
  if not chars then
    return reject("InvalidParameterValue.EmailContentIsWrong",
      "554 5.6.7 Subject is not valid UTF-8", "subject is not valid UTF-8")
  end
  if chars > MAX_SUBJECT then
    return reject("InvalidParameterValue.EmailContentIsWrong",
      "554 5.6.0 Subject longer than " .. M.MAX_SUBJECT .. " characters",
      "subject longer than " .. M.MAX_SUBJECT .. " characters")
  end
  return nil
end
M.static_checks = static_checks

-- The operations of a check, kept from one message to the next with what
-- does not change in them: the function runs for every message, and a Lua
-- state runs one hook at a time. Five for the account and domain, then four
-- per recipient (RCPT[i], made once).
local OPS = {
  { "get" }, { "get" },
  { "take", nil, nil, 2, M.RATE },
  { "take", nil, nil, DAY_TTL, M.ACCOUNT_DAILY },
  { "take", nil, nil, DAY_TTL },
}
local RCPT = {}
local function rcpt_ops(i)
  local r = { { "contains", "blocklist" }, { "contains" },
              { "take", nil, 1, 3600, M.PER_RECIPIENT_HOUR }, { "contains" } }
  RCPT[i] = r
  return r
end

-- Store traffic is one kiln.batch per message. The message's recipients
-- are taken from the rate and the daily counts up front, and given back for
-- those not sent. `take` never counts past a limit, and on Redis it spends
-- units the node has counted in advance, so the counters need no round trip
-- per message. The blocklists, unsubscribes and the day's blocklisted share
-- may be read as they were up to READ_AGE ms ago (another node's new entry
-- shows after that at most; this node's own at once).
local function give_back(rate_key, acct_key, quota_key, rate, acct, quota)
  if rate == 0 and acct == 0 and quota == 0 then return end
  local ops = {}
  if rate > 0 then ops[#ops + 1] = { "give", rate_key, rate } end
  if acct > 0 then ops[#ops + 1] = { "give", acct_key, acct } end
  if quota > 0 then ops[#ops + 1] = { "give", quota_key, quota } end
  kiln.batch(ops)
end

-- The hour's number as text, made once an hour.
local hour_at = { n = nil, text = nil }
local function hour_of(now)
  local n = now // 3600000
  if n ~= hour_at.n then hour_at.n, hour_at.text = n, tostring(n) end
  return hour_at.text
end

-- The store keys of an account and a sender domain, made once a day (and
-- the rate key once a second) rather than for every message. `own` is the
-- account's own name ("" for mail without one), for its custom blocklist.
local names = {}
local function names_of(account, own, domain, today, sec)
  local a = names[account]
  if not a or a.today ~= today then
    local acct = "acct:" .. account .. ":" .. today
    a = { today = today, blocklisted = acct .. ":blocklisted", sent = acct .. ":sent", seen = 0,
          custom = "custom-blocklist:" .. own, domains = {} }
    names[account] = a
  end
  if a.sec ~= sec then a.sec, a.rate = sec, "rate:" .. account .. ":" .. sec end
  local d = a.domains[domain]
  if not d then
    d = { quota = "quota:" .. domain .. ":" .. today, unsubscribed = "unsubscribed:" .. domain }
    a.domains[domain] = d
  end
  return a, d
end

-- What a check needs about an account's mail from a sender domain: its
-- store keys, the hour, the domain's reputation state and today's cap
-- (its reputation limit, or warm-up: `w` says which). Made at most once a
-- second per Lua state rather than for every message: reputation and
-- warm-up change a few times a day, and a raise or a block may take a
-- second to show.
local contexts = {}
local function context_of(account, own, domain, now, sec)
  local today = kiln.day(now)
  local a, d = names_of(account, own, domain, today, sec)
  local st, cap, w, warmed = nil, math.huge, nil, nil
  -- A limit that cannot be read refuses (the hook fails: 451, counted):
  -- never "no limit".
  if kiln.hooks.reputation then
    st = kiln.hooks.reputation({ domain = domain, account = account, kind = "query", count = 0, now = now })
    if st ~= nil and (type(st) ~= "table" or type(st.daily_limit) ~= "number") then
      error("reputation gave " .. domain .. " no daily limit (" .. kiln.json.encode(st) .. ")", 0)
    end
    if st then cap = st.daily_limit end
  end
  if kiln.hooks.warmup_limit then
    local answer = kiln.hooks.warmup_limit({ identity = domain, now = now })
    if answer ~= nil and (type(answer) ~= "table" or type(answer.cap) ~= "number") then
      error("warmup_limit gave " .. domain .. " no cap (" .. kiln.json.encode(answer) .. ")", 0)
    end
    w = answer and answer.cap
    if w and w < cap then warmed = answer.applies_to else w = nil end
  end
  local c = { sec = sec, a = a, d = d, hour = hour_of(now), st = st, cap = cap, w = w, warmed = warmed }
  local per = contexts[account]
  if not per then per = {}; contexts[account] = per end
  per[domain] = c
  return c
end

-- Whether the warm-up cap holds a message back: the answer's applies_to
-- names trigger types and scenarios (by default batch tasks only); an
-- answer without it caps every message.
local function warmed(set, msg)
  return set == nil or set[msg.trigger_type] or set[msg.scenario] or false
end

-- Mail without an account counts against its sender domain.
local domain_account = {}
local function account_of_domain(domain)
  local name = "domain:" .. domain
  domain_account[domain] = name
  return name
end


function M.hooks.check_limits(msg)
  local refused = static_checks(msg)
  if refused then return refused end

  local now, domain, own = msg.now, msg.sender_domain, msg.account
  local account = own
  if account == "" then account = domain_account[domain] or account_of_domain(domain) end
  local sec = now // 1000
  local per = contexts[account]
  local c = per and per[domain]
  if not c or c.sec ~= sec then c = context_of(account, own, domain, now, sec) end
  local st = c.st
  if st and st.blocked then
    return reject("FailedOperation.HighRejectionRate",
      "451 4.7.1 Sender domain blocked for today: too many bounces",
      "sender domain " .. domain .. " is blocked for today")
  end
  local a, d, cap, hour = c.a, c.d, c.cap, c.hour
  -- The day's cap: the reputation limit, or the warm-up curve's when it is
  -- lower and holds this message back.
  local w = nil
  if c.w and warmed(c.warmed, msg) then cap, w = c.w, c.w end

  local recipients = msg.recipients
  local all = #recipients
  local rate_key, sent_key, quota_key = a.rate, a.sent, d.quota
  local o = OPS[1]; o[2] = a.blocklisted
  o = OPS[2]; o[2] = sent_key
  o = OPS[3]; o[2], o[3] = rate_key, all
  -- The day's count is also the blocklisted share's denominator: a node
  -- holds at most 1 % of it ahead (see docs/lua-api.md, take).
  o = OPS[4]; o[2], o[3], o[6] = sent_key, all, a.seen // 100
  o = OPS[5]; o[2], o[3], o[5] = quota_key, all, cap
  -- The account's own blocklist (CreateCustomBlacklist).
  local custom, unsubscribed = a.custom, d.unsubscribed
  for i = 1, all do
    local r, at = lower(recipients[i]), 4 * i + 1
    local ops = RCPT[i] or rcpt_ops(i)
    local blocklist, unsub, hourly, own = ops[1], ops[2], ops[3], ops[4]
    blocklist[3] = r
    unsub[2], unsub[3] = unsubscribed, r
    -- A refused recipient's hourly count goes up too: it was asked for.
    hourly[2] = "rcpt:" .. r .. ":" .. hour
    own[2], own[3] = custom, r
    OPS[at + 1], OPS[at + 2], OPS[at + 3], OPS[at + 4] = blocklist, unsub, hourly, own
  end
  for i = 4 * all + 6, #OPS do OPS[i] = nil end
  local got = batch(OPS, READ_AGE)
  a.seen = tonumber(got[2]) or 0

  local drop, n, blocklisted = nil, 0, 0
  for i = 1, all do
    local rcpt, at = recipients[i], 4 * i + 1
    local why = nil
    if got[at + 1] then
      why = "FailedOperation.EmailAddrInBlacklist"
      blocklisted = blocklisted + 1
    elseif got[at + 4] then
      why = "FailedOperation.EmailAddrInBlacklist"
    elseif got[at + 2] then
      why = "FailedOperation.ReceiverHasUnsubscribed"
    elseif not got[at + 3] then
      why = "FailedOperation.FrequencyLimit"
    else
      n = n + 1
    end
    if why then
      drop = drop or {}
      drop[rcpt] = why
    end
  end

  -- How many each take counted: all, or 0 when it did not fit. A take of
  -- every recipient that failed may still fit those sent: n then.
  local rate_ok, acct_ok, quota_ok = got[3], got[4], got[5]
  local rate_n, acct_n, quota_n = rate_ok and all or 0, acct_ok and all or 0, quota_ok and all or 0
  if n > 0 and n < all and not (rate_ok and acct_ok and quota_ok) then
    local again = kiln.batch({
      { "take", rate_key, rate_ok and 0 or n, 2, M.RATE },
      { "take", sent_key, acct_ok and 0 or n, DAY_TTL, M.ACCOUNT_DAILY, a.seen // 100 },
      { "take", quota_key, quota_ok and 0 or n, DAY_TTL, cap },
    })
    if not rate_ok and again[1] then rate_n = n end
    if not acct_ok and again[2] then acct_n = n end
    if not quota_ok and again[3] then quota_n = n end
  end

  -- Which refusal, if any. The account's count also holds what went to
  -- blocklisted addresses (the share that stops sending).
  local sent_before = a.seen
  local refusal = nil
  if sent_before >= STOP_MIN_SENT
      and (tonumber(got[1]) or 0) / sent_before >= STOP_SHARE then
    refusal = reject("FailedOperation.HighRejectionRate",
      "550 5.7.1 Sending stopped: too much mail to blocklisted addresses",
      "sending stopped for the day: " .. math.floor(M.STOP_SHARE * 100) ..
      "% of today's mail went to blocklisted addresses")
  elseif n == 0 then
    local code = drop and drop[msg.recipients[1]] or "FailedOperation.EmailAddrInBlacklist"
    refusal = reject(code, "550 5.7.1 No recipient may receive this message (" .. code .. ")",
      "every recipient was refused")
  elseif rate_n == 0 then
    refusal = reject("FailedOperation.FrequencyLimit",
      "451 4.7.1 Sending rate above " .. M.RATE .. " per second, slow down",
      "account rate above " .. M.RATE .. " messages per second")
  elseif acct_n == 0 then
    refusal = over_quota(msg, "account daily limit of " .. M.ACCOUNT_DAILY)
  elseif quota_n == 0 then
    local why = w and ("warm-up limit of " .. w)
      or ("reputation level " .. st.level .. " limit of " .. st.daily_limit)
    refusal = over_quota(msg, "daily " .. why .. " for " .. domain)
  end
  -- Sent to every recipient: every take counted them all, nothing to give.
  if refusal or n < all then
    local sent_now = refusal and 0 or n
    local acct_keep = math.min(acct_n, sent_now + blocklisted)
    give_back(rate_key, sent_key, quota_key, rate_n - math.min(rate_n, sent_now),
      acct_n - acct_keep, quota_n - math.min(quota_n, sent_now))
  end
  if blocklisted > 0 then
    kiln.batch({ { "incr", a.blocklisted, blocklisted, DAY_TTL } })
  end
  if refusal then return refusal end
  -- Kiln reports the queued message to `reputation` as "sent" itself.
  -- nil: no objection, every recipient is sent to (Kiln reads no answer).
  if not drop then return nil end
  return { action = "send", drop = drop }
end

return M
