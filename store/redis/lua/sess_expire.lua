-- sess_expire.lua: delete a session whose grace ran out, claimed by one
-- ExpiredSessions caller from the global lost index, unless it connected
-- again (resumed) since it was lost.
--
-- KEYS[1] the session record
-- ARGV[1] cid of the lost connection
local r, raw = load()
if not r or r.cid ~= tonumber(ARGV[1]) then return {'SKIP'} end
return drop(r, raw)
