-- delete_semaphore.lua: remove a semaphore with its leases, waiters and
-- jobs (a function of the function library (lib_*.lua)). Waiting calls are woken by push and find the
-- semaphore gone. The fencing counter (KEYS[5]) is kept, so tokens stay
-- monotonic when the name is created again (job ids differ by the salt of
-- the new semaphore).
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
--
-- Returns 1. Error SD_SEMAPHORE_NOT_FOUND.
layout_guard()
if redis.call('EXISTS', K_SEM) == 0 then return redis.error_reply(E_SEMAPHORE_NOT_FOUND) end
local all = hall('HGETALL', K_WDATA)
for i = 2, #all, 2 do
  local w = cjson.decode(all[i])
  redis.call('PUBLISH', NODE_PREFIX .. w.n, w.id)
end
all = hall('HGETALL', K_GRANTED)
for i = 1, #all, 2 do redis.call('PUBLISH', NODE_PREFIX .. all[i + 1], all[i]) end
hdrop('DEL', K_SEM, K_HOLDERS, K_LEASES, K_USED, K_WAITERS, K_CQ, K_WDATA, K_WDL, K_WCOUNT,
  K_GRANTED, K_IDEM, K_JQ, K_JCH, K_JCNT, K_JIDEM, K_SBIND, K_RLOG, K_RUSED)
hdrop('UNLINK', K_JOBS, K_JFIN, K_JFAIL, K_JDLY)
return 1
