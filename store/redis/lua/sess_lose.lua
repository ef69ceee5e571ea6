-- sess_lose.lua: mark a connected session lost until now + grace
-- (LoseSession). A lost session is left as it is (its grace is not
-- renewed), and so is one connected on another node than ARGV[3].
--
-- KEYS: sesslib.lua. ARGV[1] member, ARGV[2] grace ms (<= 0: the
-- session's), ARGV[3] node ('' any).
local m = ARGV[1]
local r, raw = live(m)
if not r then return NOT_FOUND end
if r.lost > 0 or (ARGV[3] ~= '' and r.node ~= ARGV[3]) then return {'OK', raw} end
local g = tonumber(ARGV[2])
if g <= 0 then g = r.grace end
local old = cjson.decode(raw)
r.node, r.lost, r.ends = '', NOW, NOW + g
return save(m, r, old)
