-- sess_subscribe.lua: add or replace a subscription (Subscribe).
--
-- KEYS: sesslib.lua. ARGV[1] member, ARGV[2] semaphore, ARGV[3] channel,
-- ARGV[4] prefetch (>= 1).
local m = ARGV[1]
local r = live(m)
if not r then return NOT_FOUND end
local sub = {s = ARGV[2], c = ARGV[3], p = tonumber(ARGV[4])}
use(r, sub.s)
local i = sub_index(r, sub.s, sub.c)
if i then r.subs[i] = sub else table.insert(r.subs, sub) end
return save(m, r, r)
