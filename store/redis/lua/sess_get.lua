-- sess_get.lua: read a session unless unknown or lost past its grace
-- (GetSession).
--
-- KEYS[1] the session record
local r, raw = live()
if not r then return NOT_FOUND end
return unchanged(raw)
