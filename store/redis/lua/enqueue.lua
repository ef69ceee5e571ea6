-- enqueue.lua: add a scheduled job at the back of its channel's queue,
-- then dispatch what fits (a function of the lib.lua library).
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..4] as in lib.lua
-- ARGV[5] job-id salt (16 hex) used if the semaphore has none yet
-- ARGV[6] channel, ARGV[7] payload (raw JSON), ARGV[8] idempotency key ('')
-- ARGV[9] max scheduled jobs of the semaphore (0: no limit)
-- ARGV[10] parent JobRef JSON {s,i[,h]} ('' for none)
-- ARGV[11] job retention ms, ARGV[12] max terminal jobs forgotten
--
-- Returns {'ok', created (0/1), {job id hex32, record, lease JSON or ''},
-- due, events, grants}: the job as at the end of the script (inflight when a
-- permit was free), or the existing job of the idempotency key (created
-- 0). Errors SD_SEMAPHORE_NOT_FOUND, SD_QUEUE_FULL.
local conf = load_conf()
if not conf then return fail('SD_SEMAPHORE_NOT_FOUND') end
local now = now_ms()
expire(conf, now)
trim_finished(now, tonumber(ARGV[11]), tonumber(ARGV[12]))
dispatch(conf, now)
local c, k, maxq = ARGV[6], ARGV[8], tonumber(ARGV[9])
if k ~= '' then
  local old = redis.call('HGET', K_JIDEM, k)
  local v = old and job_view(old)
  if v then return done(conf, now, {'ok', 0, v}, true) end
end
if maxq > 0 and tonumber(redis.call('HGET', K_JCNT, 'q') or 0) >= maxq then
  return fail('SD_QUEUE_FULL', conf, now)
end
if redis.call('HSETNX', K_SEM, 'js', ARGV[5]) == 1 then JOB_SALT = ARGV[5] end
local seq = redis.call('HINCRBY', K_SEM, 'jn', 1)
local m = {ca = now}
if c ~= DEFAULT_CHANNEL then m.c = c end
if k ~= '' then
  m.k = k
  redis.call('HSET', K_JIDEM, k, seq)
end
if ARGV[10] ~= '' then m.p = cjson.decode(ARGV[10]) end
job_schedule(seq, m, false, now)
m.ua = nil -- = ca until the first change
job_save(seq, m, ARGV[7])
dispatch(conf, now)
return done(conf, now, {'ok', 1, job_view(seq)}, true)
