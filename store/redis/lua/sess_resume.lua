-- sess_resume.lua: move the session with a resume token to a node, as a
-- new connection (ResumeSession): a lost one within its grace, or one
-- still connected (on this node or another). A session connected on a
-- node whose heartbeat expired counts as lost since that expiry.
--
-- KEYS: sesslib.lua. ARGV[1] tenant, ARGV[2] resume token hash, ARGV[3]
-- the new node.
local id = redis.call('HGET', K_TOKENS, ARGV[1] .. '\0' .. ARGV[2])
if not id then return NOT_FOUND end
local m = ARGV[1] .. '/' .. id
local r, raw = live(m)
if not r or r.tok ~= ARGV[2] then return NOT_FOUND end
if r.lost == 0 and r.node ~= '' then
  local exp = node_expiry(r.node)
  if exp and exp <= NOW and exp + r.grace <= NOW then return NOT_FOUND end
end
local old = cjson.decode(raw)
r.node, r.lost, r.ends = ARGV[3], 0, 0
return save(m, r, old)
