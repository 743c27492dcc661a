-- Template review (hook content_filter), and banned words in every
-- message (its subject, decoded text and HTML's text, whichever way it
-- came: SMTP, SendEmail, a batch task). Template rules, each reported
-- (all reasons, not just the first):
--   minimum words by template type: marketing 150; notification,
--   transactional and test 50; trigger none;
--   variables ({{name}}) at most 1 per 5 words of text, and not only variables;
--   at most 50 images, and not only images;
--   no banned word (from the list in config.content_filter.banned_words, or
--   the data file plugins/data/banned_words.txt, one per line);
--   URLs: flagged when their host is in config.content_filter.flag_url_hosts.
-- Answers { action = "accept" } or { action = "reject", reasons = {...} }.

local M = { hooks = {} }
local cfg = kiln.settings("content_filter", {
  min_words = { type = "map", values = "integer",
    default = { marketing = 150, notification = 50, transactional = 50, test = 50, trigger = 0 },
    doc = "the fewest words of text a template of each type needs" },
  max_images = { type = "integer", default = 50, doc = "the most images a template may have" },
  max_variable_ratio = { type = "number", default = 0.2,
    doc = "the most variables per word of text" },
  banned_words = { type = "list", items = "string", default = {},
    doc = "words a template or a message (subject, text, HTML) may not contain (any case)" },
  flag_url_hosts = { type = "list", items = "string", default = {},
    doc = "link hosts that make a template fail review" },
})

-- Kiln calls this plugin's hook for templates, and for messages when
-- there are banned words to look for (a hook of your own in policy.lua
-- sees every message).

M.MIN_WORDS = cfg.min_words
M.MAX_IMAGES = cfg.max_images
M.MAX_VARIABLE_RATIO = cfg.max_variable_ratio
M.BANNED = {}
for _, w in ipairs(cfg.banned_words) do M.BANNED[#M.BANNED + 1] = string.lower(w) end
M.FLAG_HOSTS = {}
for _, h in ipairs(cfg.flag_url_hosts) do M.FLAG_HOSTS[string.lower(h)] = true end
M.only = { content_filter = { "template" } }
if #M.BANNED > 0 then M.only.content_filter[2] = "message" end

-- Visible text of HTML: tags, comments, scripts and styles removed,
-- entities decoded. Read by Kiln in one pass: Lua patterns over markup
-- (`<[^>]*>` on an unclosed tag) backtrack, and a tenant chooses the HTML.
function M.visible_text(html)
  return kiln.html_text(html)
end

local function count_words(text)
  local n = 0
  for _ in text:gmatch("[%w\128-\255][%w\128-\255'%-]*") do n = n + 1 end
  return n
end

-- Reviews a template: t.type, t.subject, t.html, t.text. Returns the reasons.
function M.review(t)
  local reasons = {}
  local kind = string.lower(t.type or "notification")
  local body = (t.html and t.html ~= "") and M.visible_text(t.html) or (t.text or "")
  local vars = 0
  for _ in body:gmatch("{{%s*[%w_%.]+%s*}}") do vars = vars + 1 end
  local plain = body:gsub("{{%s*[%w_%.]+%s*}}", " ")
  local words = count_words(plain)
  local images = 0
  for _ in (t.html or ""):gmatch("<[iI][mM][gG][%s/>]") do images = images + 1 end

  local min = M.MIN_WORDS[kind] or 50
  if words < min then
    reasons[#reasons + 1] = string.format("too few words for a %s template: %d, need at least %d", kind, words, min)
  end
  if vars > 0 and words == 0 then
    reasons[#reasons + 1] = "the template is only variables"
  elseif vars > 0 and vars > words * M.MAX_VARIABLE_RATIO then
    reasons[#reasons + 1] = string.format("too many variables: %d for %d words (at most 1 per 5 words)", vars, words)
  end
  if images > M.MAX_IMAGES then
    reasons[#reasons + 1] = string.format("too many images: %d, at most %d", images, M.MAX_IMAGES)
  end
  if images > 0 and words == 0 then
    reasons[#reasons + 1] = "the template is only images"
  end
  local lower = string.lower((t.subject or "") .. "\n" .. plain)
  for _, w in ipairs(M.BANNED) do
    if lower:find(w, 1, true) then
      reasons[#reasons + 1] = "banned word: " .. w
    end
  end
  for host in ((t.html or "") .. "\n" .. (t.text or "")):gmatch("https?://([%w%.%-]+)") do
    if M.FLAG_HOSTS[string.lower(host)] then
      reasons[#reasons + 1] = "flagged link host: " .. string.lower(host)
    end
  end
  return reasons
end

-- The banned words a message holds (subject, text, the text of its HTML).
function M.banned_in_message(msg)
  local body = msg.body
  local text = msg.subject or ""
  if body then
    text = text .. "\n" .. (body:text() or "") .. "\n" .. kiln.html_text(body:html() or "")
  end
  local lower, found = string.lower(text), {}
  for _, w in ipairs(M.BANNED) do
    if lower:find(w, 1, true) then found[#found + 1] = w end
  end
  return found
end

function M.hooks.content_filter(item)
  if item.kind == "message" then
    local found = M.banned_in_message(item)
    if #found == 0 then return nil end
    return { action = "reject", reasons = { "banned word: " .. table.concat(found, ", ") },
      code = "InvalidParameterValue.EmailContentIsWrong",
      message = "the message contains a banned word: " .. table.concat(found, ", "),
      smtp = "554 5.7.1 Message refused: it contains a banned word" }
  end
  if item.kind ~= "template" then return nil end
  local reasons = M.review(item)
  if #reasons == 0 then return { action = "accept" } end
  return { action = "reject", reasons = reasons, code = "FailedOperation.TemplateContentReviewFailed",
    message = table.concat(reasons, "; ") }
end

return M
