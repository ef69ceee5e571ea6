-- sess_subscribe.lua: add or replace a subscription (Subscribe).
--
-- KEYS[1] the session record
-- ARGV[1] semaphore, ARGV[2] channel, ARGV[3] prefetch (>= 1)
local r, raw = live()
if not r then return NOT_FOUND end
local sub = {s = ARGV[1], c = ARGV[2], p = tonumber(ARGV[3])}
local added = use(r, sub.s)
local i = sub_index(r, sub.s, sub.c)
if i then
  if r.subs[i].p == sub.p and not added then return unchanged(raw) end
  r.subs[i] = sub
else
  table.insert(r.subs, sub)
end
return save(r, raw, false)
