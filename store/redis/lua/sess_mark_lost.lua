-- sess_mark_lost.lua: mark lost a session whose node died (ExpiredSessions
-- moved it in the global index), unless it connected again since.
--
-- KEYS[1] the session record
-- ARGV[1] cid of the connection on the dead node
-- ARGV[2] lost at (ms: the node's heartbeat expiry), ARGV[3] ends at (ms)
local r, raw = load()
if not r or r.cid ~= tonumber(ARGV[1]) or r.lost > 0 then return {'SKIP'} end
r.node, r.lost, r.ends = '', tonumber(ARGV[2]), tonumber(ARGV[3])
return save(r, raw, false)
