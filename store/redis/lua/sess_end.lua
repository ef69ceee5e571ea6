-- sess_end.lua: remove a session at once (EndSession), also one lost past
-- its grace that ExpiredSessions has not returned yet: whichever of the
-- two removes it returns it.
--
-- KEYS: sesslib.lua. ARGV[1] member.
local m = ARGV[1]
local r, raw = load(m)
if not r then return NOT_FOUND end
return drop(m, r, raw)
