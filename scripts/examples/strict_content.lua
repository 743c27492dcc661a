-- A stricter review: more words in notifications, more banned phrases, no
-- link shorteners; and, for every message, no subject in capitals.
return {
  config = {
    content_filter = {
      min_words = { marketing = 200, notification = 80, transactional = 50, test = 50, trigger = 0 },
      banned_words = { "free money", "act now", "100% guaranteed", "wire transfer" },
      flag_url_hosts = { "bit.ly", "tinyurl.com", "t.co" },
    },
  },
  hooks = {
    content_filter = function(item)
      if item.kind == "template" then
        local reasons = require("content_filter").review(item)
        if #reasons == 0 then return { action = "accept" } end
        return { action = "reject", reasons = reasons, message = table.concat(reasons, "; ") }
      end
      local letters = item.subject:gsub("[^%a]", "")
      if #letters >= 8 and letters == letters:upper() then
        return { action = "reject", smtp = "554 5.7.1 Subject in capitals refused by policy",
          code = "FailedOperation.SendEmailErr", message = "subject in capitals" }
      end
      return nil
    end,
  },
}
