-- sess_end.lua: delete a session at once (EndSession), also one lost past
-- its grace that ExpiredSessions has not taken yet: whichever deletes the
-- record returns it.
--
-- KEYS[1] the session record
local r, raw = load()
if not r then return NOT_FOUND end
return drop(r, raw)
