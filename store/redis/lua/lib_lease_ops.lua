-- lib_lease_ops.lua: the lease operations batch.lua and the lease
-- functions run (part of the function library, see lib_state.lua).

-- ---------------------------------------------------------------- leases
--
-- The lease operations run after load_conf() (conf) and expire(conf, now),
-- and return {status, lease JSON or ''} without done(): batch.lua runs
-- several of them in one call and then done() once, cancel_wait.lua one.

-- acquire (args a[i..i+8]: lease id, channel, weight, ttl ms, idempotency
-- key, wait ms, node, slack ms, session; see batch.lua): 'ok' (granted, or the live
-- lease of the same idempotency key), 'wait' (enqueued), 'no_permit',
-- SD_WEIGHT_TOO_LARGE
local function op_acquire(conf, now, a, i)
  local id, c, w = a[i], a[i + 1], tonumber(a[i + 2])
  local ttl, k, wait = tonumber(a[i + 3]), a[i + 4], tonumber(a[i + 5])
  ttl = lease_ttl(conf, ttl)
  -- the same idempotency key returns its live lease, whatever else changed
  if k ~= '' then
    local lid = hget(K_IDEM, k)
    local raw = lid and hget(K_LEASES, lid)
    if raw then return {'ok', raw} end
  end
  if w > conf.max or (RL > 0 and w > RL) then return {E_WEIGHT_TOO_LARGE, ''} end
  -- no barging: a live waiter ahead in the same domain blocks the grant
  if not head(conf, c, now) and fits(conf, c, w) then
    local ok, at = room(conf, c, w, now)
    if ok then
      rate_take(conf, c, w, now)
      return {'ok', (new_lease(id, c, w, ttl, k, now, nil, nil, a[i + 8]))}
    end
    -- a permit, but no room in the rate window until at
    if wait <= 0 then
      -- the instant, the rate (limit, period ms), the wait (ms) and the
      -- channel whose window is full ('' the whole semaphore's)
      local wc = ''
      if conf.scope == SCOPE_CHANNEL then wc = c end
      return {'no_rate', string.format('%.0f', at), RL, RP, at - now, wc}
    end
  end
  if wait <= 0 then return {'no_permit', ''} end
  local seq = hincrby(K_SEM, 'wseq', 1)
  local wt = {id = id, c = c, w = w, ttl = ttl, k = k, n = a[i + 6], d = now + wait + tonumber(a[i + 7]), s = seq}
  if a[i + 8] ~= '' then wt.ss = a[i + 8] end
  hset(K_WDATA, id, cjson.encode(wt))
  redis.call('ZADD', K_WAITERS, seq, id)
  redis.call('ZADD', K_CQ, 0, cq_member(wt))
  redis.call('ZADD', K_WDL, wt.d, id)
  due_add(wt.d)
  hincrby(K_WCOUNT, 'c:' .. c, 1)
  WN = set_counter('wn', 1)
  return {'wait', ''}
end

-- release of a live lease: 'ok' and the lease JSON as it was, or
-- SD_LEASE_NOT_FOUND (unknown, released or expired). Releasing the lease
-- of an inflight job ends the job done (a Finished event); the freed
-- permits go to head waiters.
local function op_release(conf, now, id)
  local raw = hget(K_LEASES, id)
  if not raw then return {E_LEASE_NOT_FOUND, ''} end
  local l = drop_lease(id, raw)
  if l.j then
    local m, pay = job_load(l.j)
    if m and m.l == id then
      count_inflight(job_chan(m), -1)
      unbind_job(l.j, m)
      job_finish(l.j, m, pay, 'D', '', now)
    end
  end
  grant_domain(conf, l.c, now)
  return {'ok', raw}
end

-- a waiting call asks for its outcome: {'granted', lease JSON},
-- {'waiting', ''}, {'cancelled', ''} or {'gone', ''}. With cancel, a
-- still-queued waiter leaves the queue (and the waiters behind it may be
-- granted); a granted lease is handed over either way.
local function op_claim(conf, now, id, cancel)
  if hget(K_GRANTED, id) == TOO_LARGE then
    hdel(K_GRANTED, id)
    redis.call('ZREM', K_WDL, id)
    return {E_WEIGHT_TOO_LARGE, ''}
  end
  if hdel1(K_GRANTED, id) == 1 then
    redis.call('ZREM', K_WDL, id)
    local lease = hget(K_LEASES, id)
    if lease then return {'granted', lease} end
    return {'gone', ''}
  end
  local raw = hget(K_WDATA, id)
  if not raw then
    -- granted to this Store in another call's reply (the lease has the
    -- waiter's id): the caller may take it from here as well
    local lease = hget(K_LEASES, id)
    if lease then return {'granted', lease} end
    return {'gone', ''}
  end
  if not cancel then return {'waiting', ''} end
  local w = cjson.decode(raw)
  unqueue(w, false)
  grant_domain(conf, w.c, now)
  return {'cancelled', ''}
end

-- {job id hex32, record, lease JSON or ''} of a job, nil when unknown or
-- gone at now (its retention passed); with ended, also of a job this call
-- ended and deleted at once (GONE)
local function job_view(seq, now, ended)
  if ended and GONE[tonumber(seq)] then return {job_id(seq), GONE[tonumber(seq)], ''} end
  local raw = hget(K_JOBS, seq)
  if not raw then return nil end
  local m = cjson.decode(string.sub(raw, 1, string.find(raw, '\n', 1, true) - 1))
  if job_expired(m, now) then return nil end
  local lease = ''
  if m.l then lease = hget(K_LEASES, m.l) or '' end
  return {job_id(seq), raw, lease}
end

-- does a job id's salt belong to this semaphore (as created now)?
local function salt_ok(salt)
  return salt ~= '' and hget(K_SEM, 'js') == salt
end
