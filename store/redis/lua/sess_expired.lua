-- sess_expired.lua: remove and return the sessions whose grace ran out
-- (ExpiredSessions). First the connected sessions of nodes whose
-- heartbeat expired (at most ARGV[2] nodes) are marked lost since that
-- expiry, and those nodes forgotten; then at most ARGV[1] lost sessions
-- past their grace are removed, soonest first. Each session is returned
-- once, whichever instance calls.
--
-- KEYS: sesslib.lua. Returns the removed records (JSON), each as it was.
local dead = redis.call('ZRANGE', K_NODES, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]), 'WITHSCORES')
for i = 1, #dead, 2 do
  local node, exp = dead[i], tonumber(dead[i + 1])
  for _, bm in ipairs(redis.call('ZRANGE', K_BYNODE, '[' .. node .. '\0', '(' .. node .. '\1', 'BYLEX')) do
    local m = string.sub(bm, #node + 2)
    local r, raw = load(m)
    if r and r.node == node and r.lost == 0 then
      local old = cjson.decode(raw)
      r.node, r.lost, r.ends = '', exp, exp + r.grace
      save(m, r, old)
    else
      redis.call('ZREM', K_BYNODE, bm)
    end
  end
  redis.call('ZREM', K_NODES, node)
end
local out = {}
for _, m in ipairs(redis.call('ZRANGE', K_LOST, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))) do
  local r, raw = load(m)
  if r then
    drop(m, r, raw)
    out[#out + 1] = raw
  else
    redis.call('ZREM', K_LOST, m)
  end
end
return out
