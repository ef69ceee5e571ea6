-- batch.lua: the acquires, releases, waiter polls, job enqueues and job
-- transitions of one semaphore that callers sent at about the same time,
-- run one after the other in one call (a function of the function library (lib_*.lua)):
-- one round trip, one clock read, one expiry check and one dispatch of
-- queued jobs (after every caller is served) for all of them. A lone call
-- is a batch of one.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5..] the operations, in order, each a letter and its arguments:
--   'a' acquire: lease id (also the waiter id when it waits), channel,
--       weight (>= 1), ttl ms (0: the semaphore's leaseTimeout, else 60 s),
--       idempotency key ('' for none), wait ms (0: answer at once), owning
--       node id (where a later grant is published), slack ms added to the
--       waiter's deadline (now + wait + slack), session the lease is bound
--       to ('' none)
--   'r' release: lease id
--   'p' poll of a waiting acquire: waiter id
--   'e' enqueue: job-id salt, channel, payload, idempotency key, max
--       scheduled jobs, parent JobRef JSON, delay ms (see op_enqueue)
--   'E' enqueue of a batch, all or nothing: job-id salt, max scheduled
--       jobs, the number of jobs n, then n times channel, payload,
--       idempotency key, delay ms (see op_enqueue_batch)
--   't' transition: job-id salt, job seq, action, lease id, route, error,
--       hold ttl ms, child JobRef JSON, bound session, its subscription's
--       channel, min delay ms of a retry (see op_transition), quiet ('1':
--       no job view in the result)
--
-- Returns {'ok', results, due, events, grants} (lib_*.lua done), results
-- holding one {status, ...} per operation: {status, lease JSON or ''} for
-- op_acquire, op_release, op_claim; {status, created, job view} for
-- op_enqueue and {status, job view} for op_transition, the view being
-- {job id hex32, record, lease JSON or ''} as at the end of the call; an
-- error status has a message (or '') instead. When the semaphore does not
-- exist, every operation gets SD_SEMAPHORE_NOT_FOUND but a release
-- (SD_LEASE_NOT_FOUND) and a transition (SD_JOB_NOT_FOUND). Terminal jobs
-- past their retention are deleted first (at most FORGET_BATCH per class
-- and call: as many as the calls end, so the store stays flat).
local conf = load_conf()
local now
if conf then
  now = now_ms()
  expire(conf, now)
  trim_finished(now)
end
local out, i, freed = {}, 5, false
while i <= #ARGV do
  local op, r = ARGV[i], nil
  if op == 'a' then
    r = conf and op_acquire(conf, now, ARGV, i + 1) or {E_SEMAPHORE_NOT_FOUND, ''}
    i = i + 10
  elseif op == 'r' then
    r = conf and op_release(conf, now, ARGV[i + 1]) or {E_LEASE_NOT_FOUND, ''}
    i = i + 2
  elseif op == 'p' then
    r = conf and op_claim(conf, now, ARGV[i + 1], false) or {E_SEMAPHORE_NOT_FOUND, ''}
    i = i + 2
  elseif op == 'e' or op == 'E' then
    if conf and not freed then
      -- once per call: dispatch what an expiry freed (so the queue-full
      -- check counts what really waits)
      freed = true
      dispatch(conf, now)
    end
    if op == 'e' then
      r = conf and op_enqueue(conf, now, ARGV, i + 1) or {E_SEMAPHORE_NOT_FOUND, ''}
      i = i + 8
    else
      r = conf and op_enqueue_batch(conf, now, ARGV, i + 1) or {E_SEMAPHORE_NOT_FOUND, ''}
      i = i + 4 + 4 * tonumber(ARGV[i + 3])
    end
  elseif op == 't' then
    r = conf and op_transition(conf, now, ARGV, i + 1) or {E_JOB_NOT_FOUND, ''}
    if ARGV[i + 12] == '1' and r.v then r.v, r[2] = nil, '' end
    i = i + 13
  else
    return redis.error_reply('batch: unknown operation ' .. tostring(op))
  end
  out[#out + 1] = r
end
if conf then dispatch(conf, now) end
for _, r in ipairs(out) do
  if r.v then r[#r + 1] = job_view(r.v, now, true) or '' end
  if r.vs then
    local views = {}
    for x, seq in ipairs(r.vs) do views[x] = job_view(seq, now, true) or '' end
    r[#r + 1] = views
  end
end
return done(conf, now, {'ok', out}, true)
