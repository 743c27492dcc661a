-- A flat JSON object of every event field, for receivers of your own.
-- Extend it by copying this file into your plugin directory and adding
-- fields, or by overriding the callback_format hook in policy.lua.

local M = {}

function M.format(e)
  local body = {}
  for k, v in pairs(e) do body[k] = v end
  return {
    body = kiln.json.encode(body),
    headers = { ["Content-Type"] = "application/json" },
  }
end

return M
