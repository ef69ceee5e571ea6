-- set_suspended.lua: suspend or resume dispatching of queued jobs (lib.lua
-- is prepended).
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
-- ARGV[2] 1 to suspend, 0 to resume
--
-- Returns the flat HGETALL of the semaphore hash. Error
-- SD_SEMAPHORE_NOT_FOUND.
if redis.call('EXISTS', K_SEM) == 0 then return redis.error_reply('SD_SEMAPHORE_NOT_FOUND') end
redis.call('HSET', K_SEM, 'susp', ARGV[2], 'ua', now_ms())
return redis.call('HGETALL', K_SEM)
