-- The Tencent Cloud SES event notification: one JSON object per event, with
-- the service's field names and event ids (delivered 1, deferred 2,
-- dropped 3, bounce 4, open 5, click 6, spamreport 7, unsubscribe 8).

local M = {}

M.EVENT_IDS = {
  delivered = 1, deferred = 2, dropped = 3, bounce = 4,
  open = 5, click = 6, spamreport = 7, unsubscribe = 8,
}

-- Seconds, as the service sends them.
local function secs(ms) return math.floor((ms or 0) / 1000) end

function M.format(e)
  local body = {
    event = e.event,
    email = e.recipient,
    link = e.link or "",
    bulkId = e.task_id or "",
    timestamp = secs(e.at),
    reason = e.reason or "",
    bounceType = e.bounce_type or "",
    username = e.account,
    from = e.from,
    fromDomain = e.from_domain,
    templateId = tonumber(e.template_id) or 0,
    useragent = e.user_agent or "",
    subject = e.subject or "",
    messageId = e.message_id,
    sentTimestamp = secs(e.sent_at),
    eventid = M.EVENT_IDS[e.event] or 0,
    taskId = e.task_id or "",
  }
  return {
    body = kiln.json.encode(body),
    headers = { ["Content-Type"] = "application/json" },
  }
end

return M
