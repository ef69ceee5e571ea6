-- cancel_wait.lua: a waiting acquire gives up (its wait passed or its
-- context ended); a function of the function library (lib_*.lua). A queued waiter
-- leaves the queue (the waiters behind it may be granted at once, queued
-- jobs dispatched); a waiter granted in the meantime gets its lease, which
-- the caller returns or releases, so no permit leaks.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] waiter id
--
-- Returns {status, lease JSON or '', due, events, grants}: 'granted', 'cancelled',
-- 'gone', or SD_SEMAPHORE_NOT_FOUND when the semaphore was deleted.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
return done(conf, now, op_claim(conf, now, ARGV[5], true))
