-- Kiln's policy: what this installation decides differently from the
-- default plugins in plugins/. Edit, then `kiln reload` (or SIGHUP).
-- Every hook and function is described in docs/lua-api.md.
--
-- This file changes nothing yet: the defaults reproduce the product's rules
-- (reputation levels, warm-up, limits, template review, bounce classes).
return {
  config = {
    -- limits = { rate_per_second = 20, account_daily_limit = 300000 },
    -- warmup = { identities = { ["example.com"] = { curve = { 1000, 5000, 20000 } } },
    --            applies_to = { "batch", "marketing" } },
    -- reputation = { domains = { ["example.com"] = { level = 8 } } },
    -- content_filter = { banned_words = { "free money" }, flag_url_hosts = { "bit.ly" } },
    -- bounces = { blocklist_days = 180 },
  },
  -- disable = { "warmup" },
  hooks = {
    -- on_rcpt_to = function(tx)
    --   if tx.recipient:match("@example%.invalid$") then
    --     return { action = "reject", smtp = "550 5.1.2 No mail for that domain" }
    --   end
    -- end,
  },
}
