-- sess_lose.lua: mark a connected session lost (LoseSession); a lost one,
-- or one connected on another node than ARGV[2] (when given), is left as
-- it is.
--
-- KEYS[1] the session record
-- ARGV[1] grace ms (<= 0: the session's grace)
-- ARGV[2] node the session must be connected on ('' = any)
local r, raw = live()
if not r then return NOT_FOUND end
if r.lost > 0 then return unchanged(raw) end
if ARGV[2] and ARGV[2] ~= '' and r.node ~= ARGV[2] then return unchanged(raw) end
local g = tonumber(ARGV[1])
if g <= 0 then g = r.grace end
r.node, r.lost, r.ends = '', NOW, NOW + g
return save(r, raw, false)
