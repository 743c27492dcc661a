-- One mailbox provider is stricter than the others: at most 500 messages an
-- hour per sender domain to gmail.com; past that, recipients there are
-- refused with 451 (the client retries) while other providers are not held
-- back. A per-provider rule sits in on_rcpt_to, before anything is queued.
local CAP_PER_HOUR = 500
local PROVIDER = "gmail.com"

return {
  hooks = {
    on_rcpt_to = function(tx)
      local domain = string.lower(tx.recipient:match("@(.+)$") or "")
      if domain ~= PROVIDER then return nil end
      local hour = math.floor(kiln.now() / 3600000)
      local key = "provider:" .. PROVIDER .. ":" .. tx.sender_domain .. ":" .. hour
      if kiln.counter.incr(key, 1, 3600) > CAP_PER_HOUR then
        return { action = "defer", smtp = "451 4.7.1 Hourly volume to " .. PROVIDER .. " reached, try later" }
      end
      return nil
    end,
  },
}
