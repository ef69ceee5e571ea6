-- lib_jobs.lua: job records, their per-channel queues, their life cycle
-- (scheduled, finished, retried) and expiry of leases and waiters (part of
-- the function library, see lib_state.lua).

-- ---------------------------------------------------------------- jobs
--
-- A job is identified inside its semaphore by its seq (creation order,
-- HINCRBY sem jn); its id is hex16(salt) .. hex16(seq) .. "." ..
-- base64url(name), the salt (sem js) being random per creation of the
-- semaphore. Its record (K_JOBS, field = decimal seq) is a meta JSON line,
-- "\n" (cjson escapes newlines in strings, so the first "\n" ends the
-- meta), then the payload verbatim. Meta fields: c channel (absent:
-- default), s status (S I D E T C), a attempts, q queue position (while
-- scheduled), l lease id (while inflight), r route, e error, k idempotency
-- key, p parent / h child {s, i, h}, ca / ua / fa times.

function job_id(seq)
  if not JOB_SALT then JOB_SALT = hget(K_SEM, 'js') or '' end
  return JOB_SALT .. string.format('%016x', seq)
end

-- returns meta, payload (nil when there is no such job)
local function job_load(seq)
  local raw = hget(K_JOBS, seq)
  if not raw then return nil end
  local i = string.find(raw, '\n', 1, true)
  return cjson.decode(string.sub(raw, 1, i - 1)), string.sub(raw, i + 1)
end

local function job_save(seq, m, pay)
  local raw = cjson.encode(m) .. '\n' .. pay
  hset(K_JOBS, seq, raw)
  return raw
end

local function job_chan(m) return m.c or DEFAULT_CHANNEL end

-- Retention (store.Retention). A terminal job is a member of its status
-- class's finished set (jfin: done and cancelled, jfail: error and
-- timeout) scored by its finish time, so that one retention applies to a
-- whole set and its lowest scores are the next ones due. A job whose
-- retention has passed is gone for every reader (job_expired) before
-- trim_finished deletes it; with a retention of 0, job_finish deletes it
-- at once.

local function job_terminal(s) return s == 'D' or s == 'E' or s == 'T' or s == 'C' end
local function job_failed(s) return s == 'E' or s == 'T' end

-- the retention (ms) and the finished set of terminal status s
local function retention_of(s)
  if job_failed(s) then return RET_F, K_JFAIL end
  return RET_D, K_JFIN
end

-- has the job (meta m) ended and its retention passed at now?
local function job_expired(m, now)
  return m.fa ~= nil and job_terminal(m.s) and m.fa + retention_of(m.s) <= now
end

local function count(f, d)
  if f == 'q' then -- the total of scheduled jobs is kept in the semaphore hash
    JQ = set_counter('jq', d)
    return
  end
  if hincrby(K_JCNT, f, d) <= 0 then hdel(K_JCNT, f) end
end

local function count_inflight(c, d) count('i', d); count('i:' .. c, d) end

-- Queues. Channel c's queue is a run of chunks "c:<c>:<n>", n from hc to
-- tc, each a string of up to QCH entries of QW bytes (a job seq, big
-- endian); hi is the index of the head entry in chunk hc. Entries are
-- never removed from the middle: a job leaving its queue otherwise than by
-- q_pop (cancel, purge) leaves a stale entry, recognised because the job
-- is not scheduled at that position (meta q) any more. A queue with no
-- scheduled job left is dropped (q_drop), stale entries and all.
local QCH, QW = 128, 6

local function q_chunk(c, n) return 'c:' .. c .. ':' .. n end

local function q_meta(c)
  local m = hget(K_JQ, 'm:' .. c)
  if not m then return nil end
  local hc, hi, tc = string.match(m, '^(%-?%d+) (%d+) (%-?%d+)$')
  return {hc = tonumber(hc), hi = tonumber(hi), tc = tonumber(tc)}
end

local function q_save(c, m)
  hset(K_JQ, 'm:' .. c, m.hc .. ' ' .. m.hi .. ' ' .. m.tc)
end

-- puts seq at the back (or front) of channel c's queue; returns its position
local function q_push(c, seq, front)
  local m = q_meta(c)
  if not m then
    m = {hc = 0, hi = 0, tc = 0}
    redis.call('ZADD', K_JCH, 0, c)
  end
  local e = struct.pack('>I6', seq)
  if front then
    if m.hi > 0 then
      local f = q_chunk(c, m.hc)
      local s = hget(K_JQ, f)
      m.hi = m.hi - 1
      hset(K_JQ, f, string.sub(s, 1, m.hi * QW) .. e .. string.sub(s, (m.hi + 1) * QW + 1))
    else
      -- a new head chunk, filled from its end
      m.hc, m.hi = m.hc - 1, QCH - 1
      hset(K_JQ, q_chunk(c, m.hc), string.rep('\0', (QCH - 1) * QW) .. e)
    end
    q_save(c, m)
    return m.hc * QCH + m.hi
  end
  local f = q_chunk(c, m.tc)
  local s = hget(K_JQ, f) or ''
  local n = #s / QW
  if n >= QCH then
    m.tc, n, s = m.tc + 1, 0, ''
    f = q_chunk(c, m.tc)
  end
  hset(K_JQ, f, s .. e)
  q_save(c, m)
  return m.tc * QCH + n
end

-- takes the head entry of channel c's queue: seq, position (nil: empty)
local function q_pop(c)
  local m = q_meta(c)
  if not m then return nil end
  while true do
    local f = q_chunk(c, m.hc)
    local s = hget(K_JQ, f)
    if s and m.hi * QW < #s then
      local seq = struct.unpack('>I6', s, m.hi * QW + 1)
      local pos = m.hc * QCH + m.hi
      m.hi = m.hi + 1
      q_save(c, m)
      return seq, pos
    end
    if m.hc >= m.tc then
      q_save(c, m)
      return nil
    end
    hdel(K_JQ, f)
    m.hc, m.hi = m.hc + 1, 0
  end
end

-- drops channel c's queue
local function q_drop(c)
  local m = q_meta(c)
  if m then
    for n = m.hc, m.tc do hdel(K_JQ, q_chunk(c, n)) end
    hdel(K_JQ, 'm:' .. c)
  end
  redis.call('ZREM', K_JCH, c)
end

-- one scheduled job of channel c fewer (dispatched, cancelled, purged)
local function unqueued(c)
  count('q', -1)
  local f = 'q:' .. c
  if hincrby(K_JCNT, f, -1) <= 0 then
    hdel(K_JCNT, f)
    q_drop(c)
  end
end

-- is the job scheduled at queue position pos?
local function queued_at(m, pos) return m.s == 'S' and m.q == pos end

local function ev(list, seq, raw, lease)
  list[#list + 1] = {job_id(seq), raw, lease or ''}
end

-- puts a job (not inflight, not terminal any more) into its queue
local function job_schedule(seq, m, front, now)
  local c = job_chan(m)
  TOUCHED[c] = true
  m.s, m.ua, m.l = 'S', now, nil
  m.q = q_push(c, seq, front)
  count('q', 1)
  count('q:' .. c, 1)
end

-- ---------------------------------------------------------------- delayed jobs
--
-- A scheduled job that waits for its time (a delay at enqueue, a retry
-- backoff) is out of its channel's queue: a member hex16(seq) of jdly
-- scored by its runAt (meta ra), counted in sem "jd" and jcnt "d:<c>".
-- Sem "dn" is the earliest runAt (a lower bound: a job that left jdly may
-- have set it), due in the sweep index and given to the caller as its
-- timer (done); every call first queues the due ones (promote, from
-- expire), in runAt order, so they go ahead of the jobs enqueued after.

local function dly_member(seq) return string.format('%016x', seq) end

local function set_dn(v)
  DN = v
  if v > 0 then hset(K_SEM, 'dn', v) else hdel(K_SEM, 'dn') end
end

local function count_delayed(c, d)
  JD = set_counter('jd', d)
  local f = 'd:' .. c
  if hincrby(K_JCNT, f, d) <= 0 then hdel(K_JCNT, f) end
end

-- schedules a job (not inflight, not terminal) to queue at runat
local function job_delay(seq, m, runat, now)
  m.s, m.ua, m.l, m.q, m.ra = 'S', now, nil, nil, runat
  redis.call('ZADD', K_JDLY, runat, dly_member(seq))
  count_delayed(job_chan(m), 1)
  if DN == 0 or runat < DN then
    set_dn(runat)
    due_add(runat)
  end
end

-- takes a delayed job out of jdly (cancelled, purged)
local function undelay(seq, m)
  redis.call('ZREM', K_JDLY, dly_member(seq))
  count_delayed(job_chan(m), -1)
  m.ra = nil
end

-- schedules a job (not inflight, not terminal) to queue after d ms: at
-- once when d <= 0
local function job_schedule_in(seq, m, d, now)
  if d > 0 then
    job_delay(seq, m, now + d, now)
  else
    m.ra = nil
    job_schedule(seq, m, false, now)
  end
end

-- queues the delayed jobs whose runAt has come, in runAt order
local function promote(now)
  if DN == 0 or now < DN then return end
  local due = redis.call('ZRANGE', K_JDLY, '-inf', now, 'BYSCORE')
  for _, mem in ipairs(due) do
    local seq = tonumber(mem, 16)
    local m, pay = job_load(seq)
    if m and m.s == 'S' and m.ra then
      count_delayed(job_chan(m), -1)
      m.ra = nil
      job_schedule(seq, m, false, now)
      job_save(seq, m, pay)
    end
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', K_JDLY, '-inf', now) end
  local nx = redis.call('ZRANGE', K_JDLY, 0, 0, 'WITHSCORES')
  set_dn(nx[2] and tonumber(nx[2]) or 0)
end

-- the wait (ms) of a job after a failed attempts (store.RetryPolicy.Delay):
-- min(rm, rb * 2^(a-1)) times a jitter in [0, 1) drawn from Redis TIME's
-- microseconds and the job
local function backoff(conf, a, seq)
  if conf.rb <= 0 or not a or a < 1 then return 0 end
  local d = conf.rb
  for _ = 2, a do
    if d >= conf.rm then break end
    d = d * 2
  end
  if d > conf.rm then d = conf.rm end
  local t = redis.call('TIME')
  local u = ((tonumber(t[2]) * 7919 + seq * 104729) % 1000003) / 1000003
  return math.floor(d * u)
end

-- deletes a job record (not inflight or queued) with its idempotency
-- key and its finished-set entry
local function job_forget(seq, m)
  if m.k and hget(K_JIDEM, m.k) == tostring(seq) then hdel(K_JIDEM, m.k) end
  hdel(K_JOBS, seq)
  local _, k = retention_of(m.s)
  redis.call('ZREM', k, seq)
end

-- ends a job (no longer inflight or queued) in terminal status st; with a
-- retention of 0 it is deleted at once (its record stays in GONE for the
-- call's results)
local function job_finish(seq, m, pay, st, err, now)
  m.s, m.ua, m.fa, m.l, m.q = st, now, now, nil, nil
  if err and err ~= '' then m.e = err else m.e = nil end
  local raw = cjson.encode(m) .. '\n' .. pay
  ev(EV_F, seq, raw)
  local ret, k = retention_of(st)
  if ret <= 0 then
    GONE[tonumber(seq)] = raw
    job_forget(seq, m)
    return raw
  end
  hset(K_JOBS, seq, raw)
  redis.call('ZADD', k, now, seq)
  if FD and (FD == 0 or now + ret < FD) then
    FD = now + ret
    hset(K_SEM, 'fd', FD)
  end
  return raw
end

-- a job that lost its permit goes to the back of its queue while it has
-- attempts left, else ends in timeout with msg; returns its record
local function job_retry(conf, seq, m, pay, msg, now)
  if (m.a or 0) < conf.ma then
    job_schedule_in(seq, m, backoff(conf, m.a, seq), now)
    return job_save(seq, m, pay)
  end
  return job_finish(seq, m, pay, 'T', msg, now)
end

-- the lease l (already dropped) of an inflight job expired
local function job_lease_expired(conf, l, now)
  local m, pay = job_load(l.j)
  if not m or m.l ~= l.id then return end
  unbind_job(l.j, m)
  count_inflight(job_chan(m), -1)
  job_retry(conf, l.j, m, pay, string.format('lease expired after %d attempts', m.a or 0), now)
end

-- deletes the jobs of finished set k (retention ret) whose retention has
-- passed, at most n. An entry is checked against the job's record: one
-- left behind (the job was requeued or purged by an earlier release) is
-- dropped, and a job in the wrong set (ended by an earlier release, which
-- put every terminal job in jfin) or not due yet by its record moves to
-- the right set by its finish time.
local function trim_set(k, ret, now, n)
  for _, seq in ipairs(redis.call('ZRANGE', k, '-inf', now - ret, 'BYSCORE', 'LIMIT', 0, n)) do
    local m = job_load(seq)
    if m and job_expired(m, now) then
      job_forget(seq, m)
      if k ~= select(2, retention_of(m.s)) then redis.call('ZREM', k, seq) end
    else
      redis.call('ZREM', k, seq)
      if m and m.fa and job_terminal(m.s) then redis.call('ZADD', select(2, retention_of(m.s)), m.fa, seq) end
    end
  end
end

-- deletes terminal jobs whose retention has passed, at most FORGET_BATCH
-- of each class. The semaphore's hash keeps "fd" (FD) so that a call with
-- nothing due pays no command: a lower bound of the instant the next
-- terminal job is due (0: none is terminal), lowered by job_finish and set
-- anew from the sets' heads after a trim. Unless force, nothing is done
-- before it. Whatever fd misses (a job ended by an earlier release, which
-- knows no fd; a changed retention) is found by a forced trim: the sweep's
-- (at least every RECHECK) and put_semaphore's. A trim that leaves jobs
-- due (a backlog beyond FORGET_BATCH) makes the semaphore due in the sweep
-- index now, so the sweep drains it with nothing else happening.
local function trim_finished(now, force)
  if not force and FD and (FD == 0 or now < FD) then return end
  trim_set(K_JFIN, RET_D, now, FORGET_BATCH)
  trim_set(K_JFAIL, RET_F, now, FORGET_BATCH)
  local d = 0
  for k, ret in pairs({[K_JFIN] = RET_D, [K_JFAIL] = RET_F}) do
    local h = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if h[2] and (d == 0 or tonumber(h[2]) + ret < d) then d = tonumber(h[2]) + ret end
  end
  FD = d
  hset(K_SEM, 'fd', d)
  if d > 0 and d <= now then due_add(now) end -- done() reports it
end

-- drops expired leases and grants the permits they held; an expired job
-- lease sends its job back to its queue or to timeout. Returns (expired
-- leases, grants)
-- the rate instant (rn) has come: the waiters and queued jobs that waited
-- for room are granted and dispatched now (lib_rate.lua); returns grants
local function rate_due(conf, now)
  RN = 0
  hdel(K_SEM, 'rn')
  hset(K_SEM, 'dmore', 1) -- the next dispatch walks every channel
  return grant_all(conf, now)
end

local function expire(conf, now)
  promote(now)
  if now < IX then return 0, 0 end -- every lease is live (see IX)
  local granted = 0
  if RN > 0 and now >= RN then granted = rate_due(conf, now) end
  local ids = redis.call('ZRANGE', K_HOLDERS, '-inf', now, 'BYSCORE')
  if #ids == 0 then return 0, granted end
  local chans, any = {}, false
  for _, id in ipairs(ids) do
    local l = drop_lease(id)
    if l then
      chans[l.c] = true; any = true
      if l.j then job_lease_expired(conf, l, now) end
    end
  end
  local n = granted
  if any then
    if conf.scope ~= SCOPE_CHANNEL then
      n = grant_domain(conf, '', now)
    else
      for c in pairs(chans) do n = n + grant_domain(conf, c, now) end
    end
  end
  return #ids, n
end
