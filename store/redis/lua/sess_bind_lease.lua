-- sess_bind_lease.lua: record a lease acquired over the session (BindLease).
--
-- KEYS[1] the session record
-- ARGV[1] lease id
local r, raw = live()
if not r then return NOT_FOUND end
if index_of(r.leases, ARGV[1]) then return unchanged(raw) end
table.insert(r.leases, ARGV[1])
return save(r, raw, false)
