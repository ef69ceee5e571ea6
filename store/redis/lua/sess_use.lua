-- sess_use.lua: record that the session may hold leases in a semaphore
-- (UseSemaphore).
--
-- KEYS: sesslib.lua. ARGV[1] member, ARGV[2] semaphore.
local m = ARGV[1]
local r, raw = live(m)
if not r then return NOT_FOUND end
if not use(r, ARGV[2]) then return {'OK', raw} end
return save(m, r, r)
