-- sweep.lua: periodic check of one semaphore (lib.lua is prepended): drop
-- expired leases, expired waiters (and the leases of granted waiters that
-- were never claimed before their deadline: their caller is gone), then
-- grant head waiters of every domain.
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
--
-- Returns {expired leases, due, gone}: due is the next due time (0: nothing
-- pending), gone is 1 when the semaphore does not exist.
local conf = load_conf()
if not conf then return {0, 0, 1} end
local now = now_ms()
local expired = expire(conf, now)
for _, id in ipairs(redis.call('ZRANGE', K_WDL, '-inf', now, 'BYSCORE')) do
  if redis.call('HEXISTS', K_GRANTED, id) == 1 then
    drop_lease(id)
  else
    local raw = redis.call('HGET', K_WDATA, id)
    if raw then unqueue(cjson.decode(raw), false) else redis.call('ZREM', K_WDL, id) end
  end
end
grant_all(conf, now)
return {expired, next_due(), 0}
