-- state.lua: a consistent snapshot of a semaphore's usage, taken after
-- dropping expired leases (granting the permits they held, dispatching
-- queued jobs); lib.lua is prepended.
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..3] as in lib.lua
--
-- Returns {'ok', max, scope, used (flat HGETALL: "t"/"c:<channel>" ->
-- weight), wcount (flat HGETALL: "c:<channel>" -> waiters), waiters total,
-- jcnt (flat HGETALL: "q"/"q:<c>"/"i"/"i:<c>" -> jobs), due, events}, or
-- SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail('SD_SEMAPHORE_NOT_FOUND') end
local now = now_ms()
expire(conf, now)
dispatch(conf, now)
return done(conf, now, {'ok', conf.max, conf.scope, redis.call('HGETALL', K_USED),
  redis.call('HGETALL', K_WCOUNT), redis.call('ZCARD', K_WAITERS), redis.call('HGETALL', K_JCNT)}, true)
