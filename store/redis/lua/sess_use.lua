-- sess_use.lua: record that the session may hold leases in a semaphore
-- (UseSemaphore).
--
-- KEYS[1] the session record
-- ARGV[1] semaphore
local r, raw = live()
if not r then return NOT_FOUND end
if not use(r, ARGV[1]) then return unchanged(raw) end
return save(r, raw, false)
