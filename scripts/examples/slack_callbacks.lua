-- Events as chat messages: a webhook of a chat service wants {"text": ...}.
-- Kiln still signs every POST (X-Kiln-Timestamp, X-Kiln-Signature).
local ICONS = { delivered = "✅", bounce = "⛔", dropped = "🚫", deferred = "⏳",
  open = "👀", click = "🔗", spamreport = "⚠️", unsubscribe = "👋" }

return {
  hooks = {
    callback_format = function(e)
      local text = string.format("%s %s: %s → %s%s", ICONS[e.event] or "•", e.event,
        e.from, e.recipient, e.reason ~= "" and (" (" .. e.reason .. ")") or "")
      return {
        body = kiln.json.encode({ text = text, event_id = e.event_id }),
        headers = { ["Content-Type"] = "application/json" },
      }
    end,
  },
}
