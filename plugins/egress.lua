-- Egress selection (hook select_egress): one IP pool per scenario, so that
-- transactional mail never shares addresses with marketing mail.
-- Config (policy.lua: config.egress):
--   pools = { transactional = { "192.0.2.10" }, marketing = { "192.0.2.20", "192.0.2.21" } }
-- With no pools configured the hook is not defined at all (so costs
-- nothing) and the system picks the source address (or delivery.source_address).

local M = { hooks = {} }
local cfg = kiln.settings("egress", {
  pools = { type = "table", default = {},
    doc = "source addresses per scenario, e.g. { marketing = { \"192.0.2.20\" } }" },
})
local pools = cfg.pools

function M.select(msg)
  local scenario = msg.scenario ~= "" and msg.scenario or "transactional"
  local ips = pools[scenario]
  if not ips or #ips == 0 then return { pool = scenario } end
  return { pool = scenario, source_ip = ips[math.random(#ips)] }
end

if next(pools) then M.hooks.select_egress = M.select end

return M
