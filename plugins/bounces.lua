-- Bounce classification (hook classify_bounce), for every SMTP reply during
-- delivery that is not a success, and for DSNs that come back.
-- Classes: hard (the mailbox does not exist), spam (refused as spam or by
-- reputation), quota (mailbox full), policy, soft (try again), other.
-- A hard bounce on a bad mailbox is an invalid address: it goes on the
-- installation-wide blocklist (180 days; config.bounces.blocklist_days).

local M = { hooks = {} }
local cfg = kiln.settings("bounces", {
  blocklist_days = { type = "number", default = 180,
    doc = "days a hard-bounced address stays on the installation-wide blocklist" },
})
M.BLOCKLIST_DAYS = cfg.blocklist_days

local SPAM_WORDS = { "spam", "blocked", "blacklist", "blocklist", "reputation", "rbl", "junk", "abuse" }
local BAD_MAILBOX = { "no such user", "user unknown", "unknown user", "does not exist",
  "mailbox unavailable", "invalid recipient", "recipient rejected", "address rejected",
  "no mailbox", "not found" }

local function has_any(text, words)
  for _, w in ipairs(words) do
    if text:find(w, 1, true) then return true end
  end
  return false
end

-- Pure: classifies a reply (code, enhanced_code, text).
function M.classify(code, enhanced, text)
  local t = string.lower(text or "")
  local e = enhanced or ""
  local permanent = code >= 500
  if e == "5.1.1" or e == "5.1.10" or e == "5.1.2" or e == "5.1.0" and has_any(t, BAD_MAILBOX)
      or (permanent and e == "" and has_any(t, BAD_MAILBOX)) then
    return { class = "hard", retry = false, blocklist = true, invalid_address = true }
  end
  if e == "5.2.2" or e == "4.2.2" or t:find("quota", 1, true) or t:find("mailbox full", 1, true) then
    return { class = "quota", retry = not permanent or e == "5.2.2", blocklist = false }
  end
  if e == "5.7.1" and has_any(t, SPAM_WORDS) or e:match("^[45]%.7%.") and has_any(t, SPAM_WORDS) then
    return { class = "spam", retry = not permanent, blocklist = false }
  end
  if e:match("^[45]%.7%.") then
    return { class = "policy", retry = not permanent, blocklist = false }
  end
  if not permanent then
    return { class = "soft", retry = true, blocklist = false }
  end
  return { class = "other", retry = false, blocklist = false }
end

function M.hooks.classify_bounce(b)
  local c = M.classify(b.code, b.enhanced_code, b.text)
  if c.blocklist then
    local r, ttl = string.lower(b.recipient), M.BLOCKLIST_DAYS * 86400
    kiln.set.add("blocklist", r, ttl)
    -- Filed under the sender domain too: its account lists and removes it
    -- (ListBlackEmailAddress, DeleteBlackList).
    if b.sender_domain ~= "" then
      kiln.set.add("blocklist:" .. string.lower(b.sender_domain), r, ttl)
    end
    kiln.kv.put("blocklist-at:" .. r,
      kiln.json.encode({ at_ms = kiln.now(), reason = (b.code .. " " .. (b.enhanced_code or "") .. " " .. (b.text or "")) }), ttl)
  end
  return c
end

return M
