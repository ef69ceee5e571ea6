-- get_job.lua: read one job, after dropping expired leases and dispatching
-- (a function of the lib.lua library).
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..3] as in lib.lua
-- ARGV[4] job-id salt, ARGV[5] job seq (both from the job id)
--
-- Returns {'ok', {job id hex32, record, lease JSON or ''}, due, events}, or
-- SD_JOB_NOT_FOUND.
local conf = load_conf()
if not conf then return fail('SD_JOB_NOT_FOUND') end
local now = now_ms()
expire(conf, now)
dispatch(conf, now)
local v = salt_ok(ARGV[4]) and job_view(ARGV[5])
if not v then return fail('SD_JOB_NOT_FOUND', conf, now) end
return done(conf, now, {'ok', v}, true)
