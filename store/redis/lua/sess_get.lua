-- sess_get.lua: a session's record (GetSession).
--
-- KEYS: sesslib.lua. ARGV[1] member.
local r, raw = live(ARGV[1])
if not r then return NOT_FOUND end
return {'OK', raw}
