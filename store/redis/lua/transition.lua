-- transition.lua: apply one action to a job (store.JobAction), grant
-- freed permits to head waiters, then dispatch (a function of the lib.lua library).
-- Expired leases are dropped first, so an expired job lease is stale
-- before anything is judged.
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..4] as in lib.lua
-- ARGV[5] job-id salt, ARGV[6] job seq (both from the job id)
-- ARGV[7] action: delivered release fail retry suspend cancel requeue handoff
-- ARGV[8] lease id the job must still hold ('' = no check)
-- ARGV[9] route, ARGV[10] error, ARGV[11] hold ttl ms (0: none)
-- ARGV[12] child JobRef JSON {s,i[,h]} ('' for none)
--
-- Returns {'ok', {job id hex32, record, lease JSON or ''}, due, events, grants}:
-- the job at the end of the script (a requeued job may be inflight
-- already). Errors SD_JOB_NOT_FOUND, SD_STALE_LEASE, and
-- {'SD_INVALID_STATE', message, due, events, grants}.
local conf = load_conf()
if not conf then return fail('SD_JOB_NOT_FOUND') end
local now = now_ms()
expire(conf, now)
local seq = tonumber(ARGV[6])
local m, pay
if salt_ok(ARGV[5]) then m, pay = job_load(seq) end
if not m then return fail('SD_JOB_NOT_FOUND', conf, now) end
local act, lid = ARGV[7], ARGV[8]
if lid ~= '' and m.l ~= lid then return fail('SD_STALE_LEASE', conf, now) end

local names = {S = 'scheduled', I = 'inflight', D = 'done', E = 'error', T = 'timeout', C = 'cancelled'}
local function invalid()
  return done(conf, now, {'SD_INVALID_STATE', act .. ' of a ' .. names[m.s] .. ' job'})
end
local c = job_chan(m)

-- frees the permit of the inflight job
local function free()
  local l = drop_lease(m.l)
  m.l = nil
  count_inflight(c, -1)
  if l then grant_domain(conf, l.c, now) end
end

-- moves the inflight job's lease expiry to now + ttl (ttl > 0)
local function hold(ttl)
  if ttl <= 0 then return end
  local raw = redis.call('HGET', K_LEASES, m.l)
  if not raw then return end
  local l = cjson.decode(raw)
  l.ttl, l.e = ttl, now + ttl
  redis.call('HSET', K_LEASES, m.l, cjson.encode(l))
  redis.call('ZADD', K_HOLDERS, l.e, m.l)
  due_add(l.e)
end

local terminal = m.s == 'D' or m.s == 'E' or m.s == 'T' or m.s == 'C'
if act == 'requeue' then
  if not terminal then return invalid() end
  redis.call('ZREM', K_JFIN, seq)
  m.a, m.e, m.r, m.h, m.fa = nil, nil, nil, nil, nil
  job_schedule(seq, m, false, now)
  job_save(seq, m, pay)
elseif act == 'cancel' then
  if m.s == 'S' then
    unqueued(c) -- its queue entry is stale from now on
  elseif m.s == 'I' then
    free()
  else
    return invalid()
  end
  job_finish(seq, m, pay, 'C', '', now)
else
  if m.s ~= 'I' then return invalid() end
  if act == 'delivered' then
    m.r, m.ua = ARGV[9], now
    hold(tonumber(ARGV[11]))
    job_save(seq, m, pay)
  elseif act == 'handoff' then
    m.r, m.ua = ARGV[9], now
    if m.r == '' then m.r = 'semaphore' end
    if ARGV[12] ~= '' then m.h = cjson.decode(ARGV[12]) end
    if m.h and m.h.h then
      hold(tonumber(ARGV[11]))
      job_save(seq, m, pay)
    else
      free()
      job_finish(seq, m, pay, 'D', '', now)
    end
  elseif act == 'release' then
    if ARGV[9] ~= '' then m.r = ARGV[9] end -- accepted and released at once (releaseOnSuccess)
    free()
    job_finish(seq, m, pay, 'D', '', now)
  elseif act == 'fail' then
    free()
    job_finish(seq, m, pay, 'E', ARGV[10], now)
  elseif act == 'retry' then
    free()
    local msg = ARGV[10]
    if msg == '' then msg = string.format('gave up after %d attempts', m.a or 0) end
    job_retry(conf, seq, m, pay, msg, now)
  elseif act == 'suspend' then
    free()
    local a = (m.a or 0) - 1
    if a <= 0 then a = nil end
    m.a = a
    job_schedule(seq, m, true, now)
    job_save(seq, m, pay)
    redis.call('HSET', K_SEM, 'susp', 1, 'ua', now)
    conf.susp = true
  else
    return done(conf, now, {'SD_INVALID_STATE', 'unknown action ' .. act})
  end
end
dispatch(conf, now)
return done(conf, now, {'ok', job_view(seq)}, true)
