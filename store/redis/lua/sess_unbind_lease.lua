-- sess_unbind_lease.lua: forget a lease of the session (UnbindLease).
--
-- KEYS[1] the session record
-- ARGV[1] lease id
local r, raw = live()
if not r then return NOT_FOUND end
local i = index_of(r.leases, ARGV[1])
if not i then return unchanged(raw) end
table.remove(r.leases, i)
return save(r, raw, false)
