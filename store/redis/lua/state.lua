-- state.lua: a consistent snapshot of a semaphore's usage, taken after
-- dropping expired leases (and granting the permits they held); lib.lua is
-- prepended.
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
--
-- Returns {max, scope, used (flat HGETALL: "t"/"c:<channel>" -> weight),
-- wcount (flat HGETALL: "c:<channel>" -> waiters), waiters total, due}.
-- Error SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return redis.error_reply('SD_SEMAPHORE_NOT_FOUND') end
local now = now_ms()
local _, n = expire(conf, now)
local due = 0
if n > 0 then due = next_due() end
return {conf.max, conf.scope, redis.call('HGETALL', K_USED), redis.call('HGETALL', K_WCOUNT),
  redis.call('ZCARD', K_WAITERS), due}
