-- extend.lua: move a live lease's expiry to now + ttl (lib.lua is
-- prepended).
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
-- ARGV[2] lease id
-- ARGV[3] ttl ms (> 0)
--
-- Returns {lease JSON after the change, due} (due: the next due time for
-- the sweep index). Error SD_LEASE_NOT_FOUND for an unknown, released or
-- expired lease.
local conf = load_conf()
if not conf then return redis.error_reply('SD_LEASE_NOT_FOUND') end
local id, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local _, n = expire(conf, now)
local raw = redis.call('HGET', K_LEASES, id)
if not raw then
  if n > 0 then return {'', next_due()} end
  return redis.error_reply('SD_LEASE_NOT_FOUND')
end
local l = cjson.decode(raw)
l.ttl = ttl
l.e = now + ttl
raw = cjson.encode(l)
redis.call('HSET', K_LEASES, id, raw)
redis.call('ZADD', K_HOLDERS, l.e, id)
return {raw, next_due()}
