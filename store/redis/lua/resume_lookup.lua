-- resume_lookup.lua: find the session of a resume token, unless the global
-- index knows it ended (ResumeSession, first step). (Standalone.)
--
-- KEYS[1] nodes, KEYS[2] idx, KEYS[3] tokens (see index_sync.lua)
-- ARGV[1] token field "<tenant>\0<token hash>", ARGV[2] tenant
--
-- Returns false (not found), or {id, dead node, ends at}: when the session
-- is connected on a node whose heartbeat expired, that node and the ms at
-- which the session ends (expiry + grace); else "" and 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('HGET', KEYS[3], ARGV[1])
if not id then return false end
local cur = redis.call('HGET', KEYS[2], ARGV[2] .. '/' .. id)
if not cur then return {id, '', 0} end
local e = cjson.decode(cur)
if e.n == '' then
  if e.e > 0 and e.e <= now then return false end
  return {id, '', 0}
end
local exp = redis.call('ZSCORE', KEYS[1], e.n)
if exp and tonumber(exp) <= now then
  local ends = tonumber(exp) + e.g
  if ends <= now then return false end
  return {id, e.n, ends}
end
return {id, '', 0}
