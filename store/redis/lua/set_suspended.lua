-- set_suspended.lua: suspend or resume dispatching of queued jobs (a
-- function of the function library (lib_*.lua)); a resume dispatches what fits at once.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] 1 to suspend, 0 to resume
--
-- Returns {'ok', flat HGETALL of the semaphore hash, due, events, grants}, or
-- SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
hset(K_SEM, 'susp', ARGV[5], 'ua', now)
conf.susp = ARGV[5] == '1'
expire(conf, now)
dispatch(conf, now, nil, true)
return done(conf, now, {'ok', hall('HGETALL', K_SEM)}, true)
