-- lib_job_ops.lua: the job operations batch.lua runs (part of the
-- function library, see lib_state.lua).

-- ---------------------------------------------------------------- job operations
--
-- Like the lease operations (run after load_conf and expire, no done()),
-- they return {status, ...} with the job's seq in field v: batch.lua
-- appends the job's view as at the end of the call.

-- the seq of the job of idempotency key k, unless that job is gone
local function idem_job(k, now)
  local seq = hget(K_JIDEM, k)
  if not seq then return nil end
  local m = job_load(seq)
  if not m or job_expired(m, now) then return nil end
  return seq
end

-- enqueue (args a[i..i+5]: job-id salt used if the semaphore has none
-- yet, channel, payload (raw JSON), idempotency key (''), max scheduled
-- jobs of the semaphore (0: no limit), parent JobRef JSON {s,i[,h]} ('')):
-- {'ok', created 0/1} + v, the existing job of the idempotency key with
-- created 0, or SD_QUEUE_FULL
local function op_enqueue(conf, now, a, i)
  local c, k, maxq = a[i + 1], a[i + 3], tonumber(a[i + 4])
  if k ~= '' then
    local old = idem_job(k, now)
    if old then return {'ok', 0, v = tonumber(old)} end
  end
  if maxq > 0 and JQ + JD >= maxq then return {E_QUEUE_FULL, ''} end
  if hsetnx(K_SEM, 'js', a[i]) == 1 then JOB_SALT = a[i] end
  local seq = hincrby(K_SEM, 'jn', 1)
  local m = {ca = now}
  if c ~= DEFAULT_CHANNEL then m.c = c end
  if k ~= '' then
    m.k = k
    hset(K_JIDEM, k, seq)
  end
  if a[i + 5] ~= '' then m.p = cjson.decode(a[i + 5]) end
  job_schedule_in(seq, m, tonumber(a[i + 6]) or 0, now)
  m.ua = nil -- = ca until the first change
  job_save(seq, m, a[i + 2])
  return {'ok', 1, v = seq}
end


-- enqueue of a batch, all or nothing (args a[i..]: job-id salt used if
-- the semaphore has none yet, max scheduled jobs of the semaphore (0: no
-- limit), the number of jobs n, then n times channel, payload,
-- idempotency key ('')): {'ok', {created 0/1, ...}} + vs the seqs in
-- order, or SD_QUEUE_FULL when the jobs it would create do not all fit
-- (nothing is enqueued then). An item whose key matches an existing job or
-- an earlier item returns that job, created 0.
local function op_enqueue_batch(conf, now, a, i)
  local maxq, n, first = tonumber(a[i + 1]), tonumber(a[i + 2]), i + 3
  local seen, fresh = {}, 0
  for x = 0, n - 1 do
    local k = a[first + 4 * x + 2]
    if k == '' then
      fresh = fresh + 1
    elseif not seen[k] then
      seen[k] = true
      if not idem_job(k, now) then fresh = fresh + 1 end
    end
  end
  if maxq > 0 and fresh > 0 and JQ + JD + fresh > maxq then return {E_QUEUE_FULL, ''} end
  local created, seqs = {}, {}
  -- op_enqueue's arguments: salt, channel, payload, key, no limit (checked
  -- above), no parent, delay ms
  local one = {a[i], '', '', '', 0, '', 0}
  for x = 0, n - 1 do
    local b = first + 4 * x
    one[2], one[3], one[4], one[7] = a[b], a[b + 1], a[b + 2], a[b + 3]
    local r = op_enqueue(conf, now, one, 1)
    created[#created + 1], seqs[#seqs + 1] = r[2], r.v
  end
  return {'ok', created, vs = seqs}
end

-- transition: one action on a job (args a[i..i+10]: job-id salt, job seq,
-- action (delivered release fail failretry retry suspend return cancel requeue handoff),
-- lease id the job must still hold ('' = no check), route, error, hold ttl
-- ms (0: none), child JobRef JSON {s,i[,h]} (''), and for delivered the
-- session the job's lease is bound to ('' none: an earlier binding ends)
-- and the channel of its subscription): {'ok'} + v, or
-- SD_JOB_NOT_FOUND, SD_STALE_LEASE, {'SD_INVALID_STATE', message}
local function op_transition(conf, now, a, i)
  local seq = tonumber(a[i + 1])
  local m, pay
  if salt_ok(a[i]) then m, pay = job_load(seq) end
  if not m or job_expired(m, now) then return {E_JOB_NOT_FOUND, ''} end
  local act, lid = a[i + 2], a[i + 3]
  if lid ~= '' and m.l ~= lid then return {E_STALE_LEASE, ''} end
  local function invalid()
    return {E_INVALID_STATE, string.format(MSG_INVALID_TRANSITION, act, JOB_STATUS_NAMES[m.s])}
  end
  local c = job_chan(m)
  -- frees the permit of the inflight job
  local function free()
    local l = drop_lease(m.l)
    m.l = nil
    unbind_job(seq, m)
    count_inflight(c, -1)
    if l then grant_domain(conf, l.c, now) end
  end
  -- moves the inflight job's lease expiry to now + ttl (ttl > 0)
  local function hold(ttl)
    if ttl <= 0 then return end
    local raw = hget(K_LEASES, m.l)
    if not raw then return end
    local l = cjson.decode(raw)
    l.ttl, l.e = ttl, now + ttl
    hset(K_LEASES, m.l, cjson.encode(l))
    redis.call('ZADD', K_HOLDERS, l.e, m.l)
    due_add(l.e)
  end
  if act == ACT_REQUEUE then
    if not job_terminal(m.s) then return invalid() end
    redis.call('ZREM', select(2, retention_of(m.s)), seq)
    m.a, m.e, m.r, m.h, m.fa = nil, nil, nil, nil, nil
    job_schedule(seq, m, false, now)
    job_save(seq, m, pay)
  elseif act == ACT_CANCEL then
    if m.s == 'S' and m.ra then
      undelay(seq, m)
    elseif m.s == 'S' then
      unqueued(c) -- its queue entry is stale from now on
    elseif m.s == 'I' then
      free()
    else
      return invalid()
    end
    job_finish(seq, m, pay, 'C', '', now)
  else
    if m.s ~= 'I' then return invalid() end
    if act == ACT_DELIVERED then
      if a[i + 4] ~= '' then m.r = a[i + 4] end -- '' keeps the recorded route
      m.ua = now
      hold(tonumber(a[i + 6]))
      unbind_job(seq, m)
      if a[i + 8] ~= '' then bind_job(seq, m, a[i + 8], a[i + 9]) end
      job_save(seq, m, pay)
    elseif act == ACT_HANDOFF then
      m.r, m.ua = a[i + 4], now
      unbind_job(seq, m)
      if m.r == '' then m.r = 'semaphore' end
      -- the child of this hand-off ('' none: an earlier one is forgotten)
      if a[i + 7] ~= '' then m.h = cjson.decode(a[i + 7]) else m.h = nil end
      if m.h and m.h.h then
        hold(tonumber(a[i + 6]))
        job_save(seq, m, pay)
      else
        free()
        job_finish(seq, m, pay, 'D', '', now)
      end
    elseif act == ACT_RELEASE then
      if a[i + 4] ~= '' then m.r = a[i + 4] end -- accepted and released at once (releaseOnSuccess)
      free()
      job_finish(seq, m, pay, 'D', '', now)
    elseif act == ACT_FAIL then
      free()
      job_finish(seq, m, pay, 'E', a[i + 5], now)
    elseif act == ACT_FAIL_RETRY then
      free()
      if (m.a or 0) < conf.ma then
        if a[i + 5] ~= '' then m.e = a[i + 5] else m.e = nil end
        job_schedule_in(seq, m, math.max(backoff(conf, m.a, seq), tonumber(a[i + 10]) or 0), now)
        job_save(seq, m, pay)
      else
        job_finish(seq, m, pay, 'E', a[i + 5], now)
      end
    elseif act == ACT_RETRY then
      free()
      local msg = a[i + 5]
      if msg == '' then msg = string.format(MSG_GAVE_UP, m.a or 0) end
      job_retry(conf, seq, m, pay, msg, now)
    elseif act == ACT_SUSPEND or act == ACT_RETURN then
      free()
      local n = (m.a or 0) - 1
      if n <= 0 then n = nil end
      m.a = n
      if act == ACT_RETURN then m.r = nil end
      job_schedule(seq, m, true, now)
      job_save(seq, m, pay)
      if act == ACT_SUSPEND then
        hset(K_SEM, 'susp', 1, 'ua', now)
        conf.susp = true
      end
    else
      return {E_INVALID_STATE, 'unknown action ' .. act}
    end
  end
  return {'ok', v = seq}
end
