-- subscribers.lua: the subscriber registry of a semaphore, the entries
-- that match a channel (its own, or ""), each with the jobs bound on it
-- (Subscribers). The registry is a hint of which sessions subscribed:
-- Subscribers checks each against the session's record. (Standalone;
-- both keys are in the semaphore's slot.)
--
-- KEYS[1] subs: hash "<session>\0<channel>" -> "1"
-- KEYS[2] the semaphore's sbind (lib_*.lua: a job bound on a subscription
--         is "<session>\0J<channel>\0<job id>")
-- ARGV[1] channel
--
-- Returns a flat list of (session, channel, inflight).
local ch = ARGV[1]
local out = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local i = string.find(f, '\0', 1, true)
  if i then
    local s, c = string.sub(f, 1, i - 1), string.sub(f, i + 1)
    if c == ch or c == '' then
      local p = s .. '\0J' .. c
      out[#out + 1] = s
      out[#out + 1] = c
      out[#out + 1] = tostring(redis.call('ZLEXCOUNT', KEYS[2], '[' .. p .. '\0', '(' .. p .. '\1'))
    end
  end
end
return out
