-- Event callbacks (hook callback_format): turns an event into the HTTP body
-- and headers POSTed to the account's (or the sender address's) callback URL.
-- Kiln adds its own signature headers (X-Kiln-Timestamp, X-Kiln-Signature)
-- after this hook; a format cannot forge or drop them.
--
-- Config (policy.lua: config.callbacks):
--   format = "tencent" (default: the Tencent Cloud SES event notification)
--          | "generic" (a flat JSON object of every event field)

local M = { hooks = {} }
local cfg = kiln.settings("callbacks", {
  format = { type = "string", default = "tencent",
    doc = "tencent (the Tencent Cloud SES notification) or generic (a flat JSON object of every field)" },
})

M.FORMAT = cfg.format
local formats = {
  tencent = require("callbacks/tencent"),
  generic = require("callbacks/generic"),
}
local format = formats[M.FORMAT]
if not format then
  error("callbacks: unknown format " .. tostring(M.FORMAT) .. " (tencent or generic)")
end

function M.hooks.callback_format(event)
  return format.format(event)
end

return M
