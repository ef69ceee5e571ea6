-- sess_unsubscribe.lua: remove a subscription (Unsubscribe); an unknown
-- one is ignored.
--
-- KEYS: sesslib.lua. ARGV[1] member, ARGV[2] semaphore, ARGV[3] channel.
local m = ARGV[1]
local r, raw = live(m)
if not r then return NOT_FOUND end
local i = sub_index(r, ARGV[2], ARGV[3])
if not i then return {'OK', raw} end
table.remove(r.subs, i)
return save(m, r, r)
