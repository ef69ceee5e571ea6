-- dispatch.lua: dispatch up to max queued jobs that fit now (it is a function of
-- the function library (lib_*.lua)), after dropping expired leases.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] max jobs (<= 0: lib_*.lua DISPATCH_BATCH)
--
-- Returns {'ok', due, events, grants}: the jobs are events' dispatched list. Error
-- SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
-- called by a rate timer (rate.go): grant the waiters that have room now
-- (a domain still blocked gives the next instant in the reply)
if RN > 0 then grant_all(conf, now) end
dispatch(conf, now, tonumber(ARGV[5]), true)
return done(conf, now, {'ok'}, true)
