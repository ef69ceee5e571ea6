-- subscribers.lua: the subscriber registry of a semaphore, the entries
-- that match a channel (its own, or ""), with the jobs bound on each
-- (Subscribers). The registry is a hint of which sessions subscribed:
-- Subscribers checks each against the session's record. (Standalone;
-- both keys are in the semaphore's slot.)
--
-- KEYS[1] subs: hash "<session>\0<channel>" -> "1"
-- KEYS[2] the semaphore's sinf (lib.lua: jobs bound per subscription)
-- ARGV[1] channel
--
-- Returns a flat list of (session, channel, inflight).
local ch = ARGV[1]
local out = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local i = string.find(f, '\0', 1, true)
  if i then
    local c = string.sub(f, i + 1)
    if c == ch or c == '' then
      out[#out + 1] = string.sub(f, 1, i - 1)
      out[#out + 1] = c
      out[#out + 1] = redis.call('HGET', KEYS[2], f) or '0'
    end
  end
end
return out
