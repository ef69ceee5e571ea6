-- expired_claim.lua: the global step of ExpiredSessions. (Standalone.)
--
-- KEYS[1] nodes, KEYS[2] idx, KEYS[3] bynode, KEYS[4] lost (see index_sync.lua)
-- ARGV[1] max sessions to claim, ARGV[2] max dead nodes to handle
--
-- First every node whose heartbeat expired (at E) is forgotten and each
-- of its sessions moves to lost: lost at E, ending at E + its grace. Then
-- up to ARGV[1] lost sessions whose end has come are claimed (ZREM: one
-- caller wins each). The session records are updated by the caller.
--
-- Returns {moved, claimed}, each a flat list of (member, cid, lost at,
-- ends at) quadruples.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved, claimed = {}, {}
local dead = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]), 'WITHSCORES')
for i = 1, #dead, 2 do
  local node, exp = dead[i], tonumber(dead[i + 1])
  local members = redis.call('ZRANGE', KEYS[3], '[' .. node .. '\0', '(' .. node .. '\1', 'BYLEX')
  for _, bm in ipairs(members) do
    redis.call('ZREM', KEYS[3], bm)
    local m = string.sub(bm, #node + 2)
    local cur = redis.call('HGET', KEYS[2], m)
    if cur then
      local e = cjson.decode(cur)
      if e.n == node then
        e.n, e.la, e.e = '', exp, exp + e.g
        redis.call('HSET', KEYS[2], m, cjson.encode(e))
        redis.call('ZADD', KEYS[4], e.e, m)
        table.insert(moved, m)
        table.insert(moved, tostring(e.c))
        table.insert(moved, tostring(e.la))
        table.insert(moved, tostring(e.e))
      end
    end
  end
  redis.call('ZREM', KEYS[1], node)
end
local due = redis.call('ZRANGE', KEYS[4], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[4], m)
  local cur = redis.call('HGET', KEYS[2], m)
  if cur then
    local e = cjson.decode(cur)
    table.insert(claimed, m)
    table.insert(claimed, tostring(e.c))
    table.insert(claimed, tostring(e.la or 0))
    table.insert(claimed, tostring(e.e or 0))
  end
end
return {moved, claimed}
