-- state.lua: a consistent snapshot of a semaphore's usage, taken after
-- dropping expired leases (granting the permits they held, dispatching
-- queued jobs); it is a function of the function library (lib_*.lua).
--
-- KEYS: the 19 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
--
-- Returns {'ok', max, scope, used (flat HGETALL: "t"/"c:<channel>" ->
-- weight), wcount (flat HGETALL: "c:<channel>" -> waiters), waiters total,
-- jcnt (flat HGETALL: "q"/"q:<c>"/"i"/"i:<c>" -> jobs), due, events, grants}, or
-- SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
dispatch(conf, now)
local used = redis.call('HGETALL', K_USED)
local jobs = redis.call('HGETALL', K_JCNT)
if JQ > 0 then jobs[#jobs + 1] = 'q'; jobs[#jobs + 1] = tostring(JQ) end
if U > 0 then used[#used + 1] = 't'; used[#used + 1] = tostring(U) end
return done(conf, now, {'ok', conf.max, conf.scope, used,
  redis.call('HGETALL', K_WCOUNT), redis.call('ZCARD', K_WAITERS), jobs}, true)
