-- subscribers.lua: the entries of a semaphore's subscriber registry that
-- match a channel, one per session: its entry for exactly the channel if
-- any, else its "" entry (Subscribers). Tombstones older than ARGV[2] ms
-- are pruned on the way. (Standalone.)
--
-- KEYS[1] subs (see registry_sync.lua), KEYS[2] the semaphore's sinf
-- (lib.lua: jobs bound per subscription, its Inflight)
-- ARGV[1] channel, ARGV[2] tombstone age ms
--
-- Returns a flat list of (session, node, prefetch, inflight).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ch, age = ARGV[1], tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local best, order = {}, {}
for i = 1, #all, 2 do
  local e = cjson.decode(all[i + 1])
  if e.d then
    if tonumber(e.r) < now - age then redis.call('HDEL', KEYS[1], all[i]) end
  elseif e.c == ch or (e.c == '' and not best[e.s]) then
    if not best[e.s] then table.insert(order, e.s) end
    best[e.s] = e
  end
end
local out = {}
for _, s in ipairs(order) do
  local e = best[s]
  table.insert(out, e.s)
  table.insert(out, e.n)
  table.insert(out, tostring(e.p))
  table.insert(out, redis.call('HGET', KEYS[2], e.s .. '\0' .. e.c) or '0')
end
return out
