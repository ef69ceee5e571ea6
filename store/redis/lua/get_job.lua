-- get_job.lua: read one job, after dropping expired leases, deleting
-- terminal jobs past their retention and dispatching (a function of the
-- function library (lib_*.lua)). A job past its retention is not found.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] job-id salt, ARGV[6] job seq (both from the job id)
--
-- Returns {'ok', {job id hex32, record, lease JSON or ''}, due, events, grants}, or
-- SD_JOB_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_JOB_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
trim_finished(now)
dispatch(conf, now)
local v = salt_ok(ARGV[5]) and job_view(ARGV[6], now)
if not v then return fail(E_JOB_NOT_FOUND, conf, now) end
return done(conf, now, {'ok', v}, true)
