-- sess_unsubscribe.lua: remove a subscription (Unsubscribe). Jobs counted
-- on it stay bound to the session.
--
-- KEYS[1] the session record
-- ARGV[1] semaphore, ARGV[2] channel
local r, raw = live()
if not r then return NOT_FOUND end
local i = sub_index(r, ARGV[1], ARGV[2])
if not i then return unchanged(raw) end
table.remove(r.subs, i)
return save(r, raw, false)
