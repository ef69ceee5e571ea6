-- lib.lua: helpers shared by every per-semaphore operation.
--
-- Go (scripts.go) builds one Redis function library from this file and the
-- per-semaphore scripts: each script's body becomes the body of a function
-- (keys, args) registered with redis.register_function, run by FCALL, and
-- begins with begin(keys, args), which sets the per-call state below. The
-- helpers are thus compiled and defined once, at FUNCTION LOAD, not on
-- every call. Redis runs one function at a time, so the per-call state in
-- these upvalues is never shared by two calls. All per-semaphore functions
-- receive the same KEYS, all in the
-- semaphore's hash slot (built in keys.go, semKeys):
--
--   KEYS[1]  sem        hash: config and bookkeeping (max, scope, lt, ma, susp, ...;
--                       js job-id salt, jn job seq, rr round-robin cursor, jlo list hint,
--                       ix sweep-index bound, see IX; u, wn, jq counters, see U)
--   KEYS[2]  holders    zset: lease id -> expiry (ms, Redis TIME)
--   KEYS[3]  leases     hash: lease id -> lease JSON {id,c,w,f,ttl,a,e,k[,j]} (j: job seq)
--   KEYS[4]  used       hash: "c:<channel>" -> used weight of the channel (total: sem "u")
--   KEYS[5]  fence      string: fencing counter (INCR; never deleted)
--   KEYS[6]  waiters    zset: waiter id -> arrival seq (FIFO of the whole semaphore)
--   KEYS[7]  cq         zset, all scores 0: per-channel FIFO, member = chanprefix(c) .. seq16 .. id
--   KEYS[8]  wdata      hash: waiter id -> waiter JSON {id,c,w,ttl,k,n,d,s}
--   KEYS[9]  wdeadline  zset: waiter id -> deadline (ms), waiting and granted-unclaimed waiters
--   KEYS[10] wcount     hash: "c:<channel>" -> number of waiting waiters
--   KEYS[11] granted    hash: waiter id -> node id, while its granted lease is not yet claimed
--   KEYS[12] idem       hash: idempotency key -> lease id
--   KEYS[13] jobs       hash: job seq -> job record: meta JSON, "\n", payload (verbatim)
--   KEYS[14] jq         hash: job queues, per channel c: "m:<c>" -> "hc hi tc", chunks
--                       "c:<c>:<n>" -> up to QCH 6-byte job seqs (see q_push)
--   KEYS[15] jch        zset, all scores 0: channels with scheduled jobs (round-robin by name)
--   KEYS[16] jcnt       hash: "q:<c>" scheduled jobs (total: sem "jq"), "i" / "i:<c>" inflight jobs
--   KEYS[17] jfin       zset: job seq -> finish time (ms), terminal jobs (retention)
--   KEYS[18] jidem      hash: job idempotency key -> job seq
--   KEYS[19] sbind      zset, all scores 0: what websocket sessions hold here,
--                       "<session>\0L<lease id>" (a sync lease) and
--                       "<session>\0J<channel>\0<job id>" (a job delivered to
--                       it through its subscription to channel): a ZLEXCOUNT of
--                       "<session>\0J<channel>\0" is that subscription's load
--
-- A sync lease bound to a session carries s (session) in its JSON, and
-- drop_lease unbinds it; a job delivered to a session carries ss and sc
-- (session, subscription channel) in its meta, and whatever ends its lease
-- unbinds it (unbind_job) in the same call.
-- ARGV[1] = prefix of the node pub/sub channels ("sd:node:"): a grant to
-- a waiter is pushed by PUBLISH ARGV[1]..<node id> <waiter id>.
-- ARGV[2] = 16 random hex characters and ARGV[3] = "." .. base64url(name):
-- a job's lease id is ARGV[2] .. hex16(fencing token) .. ARGV[3] (the
-- format of store.NewLeaseID, unique since the token is).
-- ARGV[4] = the calling Store's node id: a grant to one of its own waiters
-- is handed over in the reply instead (see grant_domain).
-- Script-specific arguments start at ARGV[5].
--
-- A waiter's id is the id of the lease it will get. Times are ms of Redis
-- TIME; a lease is live while now < expiry, a waiter while now < deadline.
--
-- Every per-semaphore script except delete_semaphore.lua replies through
-- done(): {status, ..., due, events, grants}. status is 'ok', a
-- script-specific word, or an error code "SD_..." (in-band, so that the
-- events of work done before the error are not lost); due > 0 is the
-- semaphore's next due time for the sweep index (sent only when it went
-- down, see IX); events = {dispatched, finished}, each a list of {job id
-- hex32, job record, lease JSON or ''} (JobEvents); grants = the leases
-- granted to the calling Store's waiters, {waiter id, lease JSON} each (see
-- grant_domain).

local KEYS, ARGV
local K_SEM, K_HOLDERS, K_LEASES, K_USED, K_FENCE
local K_WAITERS, K_CQ, K_WDATA, K_WDL, K_WCOUNT
local K_GRANTED, K_IDEM
local K_JOBS, K_JQ, K_JCH, K_JCNT, K_JFIN, K_JIDEM
local K_SBIND
local NODE_PREFIX, LID_RAND, ID_SUFFIX, CALLER
-- grants to waiters of the calling Store, {waiter id, lease JSON} each:
-- done() returns them (see grant_domain)
local LOCAL_GRANTS
-- DEFAULT_CHANNEL, DEFAULT_TTL, DISPATCH_BATCH, RECHECK, the E_ error codes,
-- ACT_ actions, JOB_STATUS_NAMES and the MSG_ formats come from consts.lua,
-- generated from Go (consts.go).

-- lease_ttl: a lease's ttl (ms): ttl when > 0, else the semaphore's
-- leaseTimeout, else DEFAULT_TTL (store.AcquireParams, store.ExtendParams)
local function lease_ttl(conf, ttl)
  if ttl and ttl > 0 then return ttl end
  if conf.lt and conf.lt > 0 then return conf.lt end
  return DEFAULT_TTL
end

-- job events of this call (done() returns them)
local EV_D, EV_F
-- channels whose capacity domain may have opened for a queued job in this
-- call (a lease ended, a waiter left, a job was queued): with scope
-- channel, the final dispatch looks only at these (every other channel was
-- left with nothing more fitting by the previous call)
local TOUCHED
local JOB_SALT

-- The sweep index (sweep.go) must hold the semaphore at or below the due
-- time (expiry or deadline) of each of its leases and waiters. The
-- semaphore's hash keeps "ix", the time last reported to the index for a
-- ZADD LT: a lower bound of every such due time. Adding an item due before
-- ix lowers ix (due_add) and the call reports it; any other item is due at
-- or after ix, already covered. A report is never later than now +
-- RECHECK, and once ix has passed, the next call (or the sweep) sets it
-- anew from the exact earliest due time (next_due): so a lost report (a
-- node that died before its ZADD) is made good within RECHECK by the next
-- call. Since ix <= every due time, expire() has nothing to look for while
-- now < ix. IX is this call's ix (math.huge: none), IX_LOW whether it went
-- down, IX_EXACT that the call must recompute it (the sweep).
local IX, IX_LOW, IX_EXACT
-- counters kept in the semaphore's hash (read with its config, so the
-- common paths need no other read): U "u" total used weight, WN "wn"
-- waiting waiters, JQ "jq" scheduled jobs (the sum of jcnt "q:<c>"). Every change
-- writes through (set_counter); sweep.lua recomputes them.
local U, WN, JQ

-- sets the per-call state; every registered function calls it first
local function begin(keys, args)
  KEYS, ARGV = keys, args
  K_SEM, K_HOLDERS, K_LEASES, K_USED, K_FENCE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  K_WAITERS, K_CQ, K_WDATA, K_WDL, K_WCOUNT = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
  K_GRANTED, K_IDEM = KEYS[11], KEYS[12]
  K_JOBS, K_JQ, K_JCH, K_JCNT, K_JFIN, K_JIDEM = KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17], KEYS[18]
  K_SBIND = KEYS[19]
  NODE_PREFIX, LID_RAND, ID_SUFFIX, CALLER = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
  LOCAL_GRANTS = {}
  EV_D, EV_F, TOUCHED, JOB_SALT = {}, {}, {}, nil
  IX, IX_LOW, IX_EXACT = math.huge, false, false
  U, WN, JQ = 0, 0, 0
end

-- adds d to the counter field f of the semaphore's hash; returns the new
-- value (a counter at 0 is not stored)
local function set_counter(f, d)
  local v = redis.call('HINCRBY', K_SEM, f, d)
  if v <= 0 then
    redis.call('HDEL', K_SEM, f)
    return 0
  end
  return v
end

-- an item (lease expiry or waiter deadline) due at d was added or moved
local function due_add(d)
  if d < IX then IX, IX_LOW = d, true end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- the version of the data layout of a semaphore's keys ("v" in its hash)
local LAYOUT = '2'

-- the counters of the semaphore's hash (see U) and ix, computed from the
-- data; sets them in the hash
local function recount()
  local u, byc = 0, redis.call('HGETALL', K_USED)
  for i = 1, #byc, 2 do
    if string.sub(byc[i], 1, 2) == 'c:' then u = u + tonumber(byc[i + 1]) end
  end
  redis.call('HDEL', K_USED, 't') -- layout 1 kept the total here
  U, WN = u, redis.call('ZCARD', K_WAITERS)
  JQ = 0
  local jc = redis.call('HGETALL', K_JCNT)
  for i = 1, #jc, 2 do
    if string.sub(jc[i], 1, 2) == 'q:' then JQ = JQ + tonumber(jc[i + 1]) end
  end
  redis.call('HDEL', K_JCNT, 'q') -- layout 1 kept the total here
  for f, v in pairs({u = U, wn = WN, jq = JQ}) do
    if v > 0 then redis.call('HSET', K_SEM, f, v) else redis.call('HDEL', K_SEM, f) end
  end
  IX = 0 -- unknown: expire() looks, done() sets ix from the data
  redis.call('HDEL', K_SEM, 'ix')
end

-- config of the semaphore, or nil when it does not exist. A semaphore
-- written by an earlier layout gets its counters computed first.
local function load_conf()
  local v = redis.call('HMGET', K_SEM, 'max', 'scope', 'lt', 'ma', 'susp', 'ix', 'u', 'wn', 'jq', 'v')
  if not v[1] then return nil end
  IX = tonumber(v[6]) or math.huge
  U, WN, JQ = tonumber(v[7] or 0), tonumber(v[8] or 0), tonumber(v[9] or 0)
  if v[10] ~= LAYOUT then
    recount()
    redis.call('HSET', K_SEM, 'v', LAYOUT)
  end
  return {max = tonumber(v[1]), scope = v[2], lt = tonumber(v[3]), ma = tonumber(v[4] or 0) or 0,
    susp = v[5] == '1'}
end

local function used(field)
  return tonumber(redis.call('HGET', K_USED, field) or 0)
end

local function add_used(c, delta)
  if delta < 0 then TOUCHED[c] = true end
  U = set_counter('u', delta)
  local f = 'c:' .. c
  if redis.call('HINCRBY', K_USED, f, delta) <= 0 then redis.call('HDEL', K_USED, f) end
end

-- does weight w fit in channel c's capacity domain?
local function fits(conf, c, w)
  if conf.scope == SCOPE_CHANNEL then return used('c:' .. c) + w <= conf.max end
  return U + w <= conf.max
end

local function chan_prefix(c)
  return string.format('%04d', #c) .. c
end

local function cq_member(w)
  return chan_prefix(w.c) .. string.format('%016d', w.s) .. w.id
end

-- creates a live lease and returns its JSON and the lease; id nil makes a
-- job lease id (lib header), j is the job seq of a job lease (nil for
-- sync), g 1 marks the lease granted to a waiter (it may sit in granted),
-- ss the session a sync lease is bound to (nil or '': none)
local function new_lease(id, c, w, ttl, k, now, j, g, ss)
  local f = redis.call('INCR', K_FENCE)
  if not id then id = LID_RAND .. string.format('%016x', f) .. ID_SUFFIX end
  local l = {id = id, c = c, w = w, f = f, ttl = ttl, a = now, e = now + ttl, k = k, j = j, g = g}
  if ss and ss ~= '' then
    l.s = ss
    redis.call('ZADD', K_SBIND, 0, ss .. '\0L' .. id)
  end
  local raw = cjson.encode(l)
  redis.call('HSET', K_LEASES, id, raw)
  redis.call('ZADD', K_HOLDERS, l.e, id)
  due_add(l.e)
  add_used(c, w)
  if k ~= '' then redis.call('HSET', K_IDEM, k, id) end
  return raw, l
end

-- the job id of a job seq (defined with the jobs below)
local job_id

-- ends the binding of sync lease l to its session (l.s): it ended
local function unbind(l)
  redis.call('ZREM', K_SBIND, l.s .. '\0L' .. l.id)
  l.s = nil
end

local function job_member(seq, ss, sc)
  return ss .. '\0J' .. sc .. '\0' .. job_id(seq) .. ID_SUFFIX
end

-- binds inflight job seq (meta m) to session ss, counted on its
-- subscription to channel sc (the caller saves m)
local function bind_job(seq, m, ss, sc)
  m.ss, m.sc = ss, sc
  redis.call('ZADD', K_SBIND, 0, job_member(seq, ss, sc))
end

-- ends the binding of job seq (meta m) to a session, if any: its lease
-- ended, or it is delivered again (the caller saves m)
local function unbind_job(seq, m)
  if not m.ss then return end
  redis.call('ZREM', K_SBIND, job_member(seq, m.ss, m.sc or ''))
  m.ss, m.sc = nil, nil
end

-- ends a lease (release or expiry); returns the decoded lease or nil. raw:
-- its JSON when the caller has just read it
local function drop_lease(id, raw)
  redis.call('ZREM', K_HOLDERS, id)
  raw = raw or redis.call('HGET', K_LEASES, id)
  if not raw then return nil end
  local l = cjson.decode(raw)
  redis.call('HDEL', K_LEASES, id)
  add_used(l.c, -l.w)
  if l.k ~= '' and redis.call('HGET', K_IDEM, l.k) == id then redis.call('HDEL', K_IDEM, l.k) end
  if l.g and redis.call('HDEL', K_GRANTED, id) == 1 then redis.call('ZREM', K_WDL, id) end
  if l.s then unbind(l) end
  return l
end

-- takes a waiter out of the queues; keep_deadline leaves its wdeadline
-- entry (a granted, not yet claimed waiter)
local function unqueue(w, keep_deadline)
  TOUCHED[w.c] = true
  redis.call('ZREM', K_WAITERS, w.id)
  redis.call('ZREM', K_CQ, cq_member(w))
  redis.call('HDEL', K_WDATA, w.id)
  if not keep_deadline then redis.call('ZREM', K_WDL, w.id) end
  local f = 'c:' .. w.c
  if redis.call('HINCRBY', K_WCOUNT, f, -1) <= 0 then redis.call('HDEL', K_WCOUNT, f) end
  WN = set_counter('wn', -1)
end

-- first live waiter of channel c's capacity domain (c is ignored for scope
-- total); expired waiters found at the head are dropped on the way
local function head(conf, c, now)
  if WN <= 0 then return nil end
  while true do
    local id, m
    if conf.scope == SCOPE_CHANNEL then
      local p = chan_prefix(c)
      m = redis.call('ZRANGE', K_CQ, '[' .. p, '[' .. p .. '\255', 'BYLEX', 'LIMIT', 0, 1)[1]
      if not m then return nil end
      id = string.sub(m, #p + 17)
    else
      id = redis.call('ZRANGE', K_WAITERS, 0, 0)[1]
      if not id then return nil end
    end
    local raw = redis.call('HGET', K_WDATA, id)
    if not raw then
      -- cannot happen (the structures change together); heal anyway
      redis.call('ZREM', K_WAITERS, id)
      if m then redis.call('ZREM', K_CQ, m) end
    else
      local w = cjson.decode(raw)
      if w.d > now then return w end
      unqueue(w, false)
    end
  end
end

-- grants head waiters of channel c's domain while they fit. A waiter of
-- another Store is pushed its grant (PUBLISH) and must claim it (granted,
-- kept until its deadline: a grant to a dead node's waiter comes back). A
-- waiter of the calling Store, alive since it runs this call, gets its
-- lease in the reply (LOCAL_GRANTS) with no claim.
local function grant_domain(conf, c, now)
  local n = 0
  while true do
    local w = head(conf, c, now)
    if not w or not fits(conf, w.c, w.w) then return n end
    if w.n == CALLER then
      unqueue(w, false)
      LOCAL_GRANTS[#LOCAL_GRANTS + 1] = {w.id, (new_lease(w.id, w.c, w.w, w.ttl, w.k, now, nil, nil, w.ss))}
    else
      unqueue(w, true)
      new_lease(w.id, w.c, w.w, w.ttl, w.k, now, nil, 1, w.ss)
      redis.call('HSET', K_GRANTED, w.id, w.n)
      redis.call('PUBLISH', NODE_PREFIX .. w.n, w.id)
    end
    n = n + 1
  end
end

-- grants head waiters of every domain
local function grant_all(conf, now)
  if conf.scope ~= SCOPE_CHANNEL then return grant_domain(conf, '', now) end
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', K_WCOUNT)) do
    n = n + grant_domain(conf, string.sub(f, 3), now)
  end
  return n
end

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
  if not JOB_SALT then JOB_SALT = redis.call('HGET', K_SEM, 'js') or '' end
  return JOB_SALT .. string.format('%016x', seq)
end

-- returns meta, payload (nil when there is no such job)
local function job_load(seq)
  local raw = redis.call('HGET', K_JOBS, seq)
  if not raw then return nil end
  local i = string.find(raw, '\n', 1, true)
  return cjson.decode(string.sub(raw, 1, i - 1)), string.sub(raw, i + 1)
end

local function job_save(seq, m, pay)
  local raw = cjson.encode(m) .. '\n' .. pay
  redis.call('HSET', K_JOBS, seq, raw)
  return raw
end

local function job_chan(m) return m.c or DEFAULT_CHANNEL end

local function count(f, d)
  if f == 'q' then -- the total of scheduled jobs is kept in the semaphore hash
    JQ = set_counter('jq', d)
    return
  end
  if redis.call('HINCRBY', K_JCNT, f, d) <= 0 then redis.call('HDEL', K_JCNT, f) end
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
  local m = redis.call('HGET', K_JQ, 'm:' .. c)
  if not m then return nil end
  local hc, hi, tc = string.match(m, '^(%-?%d+) (%d+) (%-?%d+)$')
  return {hc = tonumber(hc), hi = tonumber(hi), tc = tonumber(tc)}
end

local function q_save(c, m)
  redis.call('HSET', K_JQ, 'm:' .. c, m.hc .. ' ' .. m.hi .. ' ' .. m.tc)
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
      local s = redis.call('HGET', K_JQ, f)
      m.hi = m.hi - 1
      redis.call('HSET', K_JQ, f, string.sub(s, 1, m.hi * QW) .. e .. string.sub(s, (m.hi + 1) * QW + 1))
    else
      -- a new head chunk, filled from its end
      m.hc, m.hi = m.hc - 1, QCH - 1
      redis.call('HSET', K_JQ, q_chunk(c, m.hc), string.rep('\0', (QCH - 1) * QW) .. e)
    end
    q_save(c, m)
    return m.hc * QCH + m.hi
  end
  local f = q_chunk(c, m.tc)
  local s = redis.call('HGET', K_JQ, f) or ''
  local n = #s / QW
  if n >= QCH then
    m.tc, n, s = m.tc + 1, 0, ''
    f = q_chunk(c, m.tc)
  end
  redis.call('HSET', K_JQ, f, s .. e)
  q_save(c, m)
  return m.tc * QCH + n
end

-- takes the head entry of channel c's queue: seq, position (nil: empty)
local function q_pop(c)
  local m = q_meta(c)
  if not m then return nil end
  while true do
    local f = q_chunk(c, m.hc)
    local s = redis.call('HGET', K_JQ, f)
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
    redis.call('HDEL', K_JQ, f)
    m.hc, m.hi = m.hc + 1, 0
  end
end

-- drops channel c's queue
local function q_drop(c)
  local m = q_meta(c)
  if m then
    for n = m.hc, m.tc do redis.call('HDEL', K_JQ, q_chunk(c, n)) end
    redis.call('HDEL', K_JQ, 'm:' .. c)
  end
  redis.call('ZREM', K_JCH, c)
end

-- one scheduled job of channel c fewer (dispatched, cancelled, purged)
local function unqueued(c)
  count('q', -1)
  local f = 'q:' .. c
  if redis.call('HINCRBY', K_JCNT, f, -1) <= 0 then
    redis.call('HDEL', K_JCNT, f)
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

-- ends a job (no longer inflight or queued) in terminal status st
local function job_finish(seq, m, pay, st, err, now)
  m.s, m.ua, m.fa, m.l, m.q = st, now, now, nil, nil
  if err and err ~= '' then m.e = err else m.e = nil end
  redis.call('ZADD', K_JFIN, now, seq)
  local raw = job_save(seq, m, pay)
  ev(EV_F, seq, raw)
  return raw
end

-- a job that lost its permit goes to the back of its queue while it has
-- attempts left, else ends in timeout with msg; returns its record
local function job_retry(conf, seq, m, pay, msg, now)
  if (m.a or 0) < conf.ma then
    job_schedule(seq, m, false, now)
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

-- terminal jobs finished before now - retention are forgotten (at most n)
local function job_forget(seq)
  local m = job_load(seq)
  if m and m.k and redis.call('HGET', K_JIDEM, m.k) == tostring(seq) then redis.call('HDEL', K_JIDEM, m.k) end
  redis.call('HDEL', K_JOBS, seq)
  redis.call('ZREM', K_JFIN, seq)
end

local function trim_finished(now, retention, n)
  for _, seq in ipairs(redis.call('ZRANGE', K_JFIN, '-inf', now - retention, 'BYSCORE', 'LIMIT', 0, n)) do
    job_forget(seq)
  end
end

-- drops expired leases and grants the permits they held; an expired job
-- lease sends its job back to its queue or to timeout. Returns (expired
-- leases, grants)
local function expire(conf, now)
  if now < IX then return 0, 0 end -- every lease is live (see IX)
  local ids = redis.call('ZRANGE', K_HOLDERS, '-inf', now, 'BYSCORE')
  if #ids == 0 then return 0, 0 end
  local chans, any = {}, false
  for _, id in ipairs(ids) do
    local l = drop_lease(id)
    if l then
      chans[l.c] = true; any = true
      if l.j then job_lease_expired(conf, l, now) end
    end
  end
  local n = 0
  if any then
    if conf.scope ~= SCOPE_CHANNEL then
      n = grant_domain(conf, '', now)
    else
      for c in pairs(chans) do n = n + grant_domain(conf, c, now) end
    end
  end
  return #ids, n
end

-- earliest holder expiry or waiter deadline (ms), 0 when there is none:
-- the time this semaphore is next due in the sweep index
local function next_due()
  local d = 0
  local h = redis.call('ZRANGE', K_HOLDERS, 0, 0, 'WITHSCORES')
  if h[2] then d = tonumber(h[2]) end
  local w = redis.call('ZRANGE', K_WDL, 0, 0, 'WITHSCORES')
  if w[2] then
    local x = tonumber(w[2])
    if d == 0 or x < d then d = x end
  end
  return d
end

-- the channel after c (by name, wrapping) with scheduled jobs; nil: none
local function next_chan(c)
  local r
  if c ~= '' then r = redis.call('ZRANGE', K_JCH, '(' .. c, '+', 'BYLEX', 'LIMIT', 0, 1)[1] end
  return r or redis.call('ZRANGE', K_JCH, '-', '+', 'BYLEX', 'LIMIT', 0, 1)[1]
end

-- moves the head job of channel c to inflight with a new lease of weight
-- 1; false when the queue held no scheduled job (it is dropped then)
local function dispatch_one(conf, c, now)
  while true do
    local seq, pos = q_pop(c)
    if not seq then
      q_drop(c)
      return false
    end
    local m, pay = job_load(seq)
    if m and queued_at(m, pos) then
      local lraw, l = new_lease(nil, c, 1, lease_ttl(conf, 0), '', now, seq)
      m.s, m.q, m.l, m.a, m.ua = 'I', nil, l.id, (m.a or 0) + 1, now
      unqueued(c)
      count_inflight(c, 1)
      ev(EV_D, seq, job_save(seq, m, pay), lraw)
      return true
    end
  end
end

-- the channels to dispatch from, in round-robin order after the cursor
-- at: every channel with scheduled jobs (nil: walk the jch zset), or with
-- scope channel and not all, only the touched ones (a list)
local function dispatch_order(conf, at, all)
  if all or conf.scope ~= SCOPE_CHANNEL or redis.call('HEXISTS', K_SEM, 'dmore') == 1 then return nil end
  -- ranks in jch give the byte order of names (Lua's < may follow the locale)
  local k = 0
  if at ~= '' then k = redis.call('ZLEXCOUNT', K_JCH, '-', '[' .. at) end
  local after, before = {}, {}
  for c in pairs(TOUCHED) do
    local r = redis.call('ZRANK', K_JCH, c)
    if r then
      if r >= k then after[#after + 1] = {r, c} else before[#before + 1] = {r, c} end
    end
  end
  local byrank = function(x, y) return x[1] < y[1] end
  table.sort(after, byrank)
  table.sort(before, byrank)
  local list = {}
  for _, x in ipairs(after) do list[#list + 1] = x[2] end
  for _, x in ipairs(before) do list[#list + 1] = x[2] end
  return list
end

-- dispatches up to max scheduled jobs that fit (SPEC §1): channels served
-- round-robin by name after the cursor (the channel served last), FIFO
-- within a channel, none while suspended, none into a capacity domain with
-- a live sync waiter. all: look at every channel (a config change, a
-- resume, the sweep), not only the touched ones. Returns how many. When
-- it stops at max, the next dispatch looks at every channel (dmore).
local function dispatch(conf, now, max, all)
  if conf.susp or JQ <= 0 then return 0 end
  if not max or max <= 0 then max = DISPATCH_BATCH end
  local n, at, served = 0, redis.call('HGET', K_SEM, 'rr') or '', nil
  local list = dispatch_order(conf, at, all)
  if list and #list == 0 then return 0 end
  local blocked, nblocked, i = {}, 0, 0
  while n < max do
    local c
    if list then
      i = i % #list + 1
      c = list[i]
    else
      c = next_chan(at) -- a channel with scheduled jobs
      if not c then break end
    end
    if blocked[c] then
      if nblocked >= (list and #list or redis.call('ZCARD', K_JCH)) then break end
    elseif list and redis.call('ZSCORE', K_JCH, c) == false then
      blocked[c], nblocked = true, nblocked + 1 -- its queue emptied
    elseif head(conf, c, now) or not fits(conf, c, 1) then
      if conf.scope ~= SCOPE_CHANNEL then break end -- one domain: if one cannot, none can
      blocked[c], nblocked = true, nblocked + 1
    elseif dispatch_one(conf, c, now) then
      n, served = n + 1, c
    end
    at = c
  end
  if served then redis.call('HSET', K_SEM, 'rr', served) end
  if n >= max then
    redis.call('HSET', K_SEM, 'dmore', 1)
  elseif list == nil then
    redis.call('HDEL', K_SEM, 'dmore')
  end
  return n
end

-- the reply of a per-semaphore script: dispatches what fits now (unless
-- nodispatch; conf nil: the semaphore does not exist), then appends due
-- and events to t
local function done(conf, now, t, nodispatch)
  if conf and not nodispatch then dispatch(conf, now) end
  local due = 0
  if conf and (IX_EXACT or IX <= now) then
    local e = next_due()
    if e > 0 then
      due = math.min(e, now + RECHECK)
      redis.call('HSET', K_SEM, 'ix', due)
    else
      redis.call('HDEL', K_SEM, 'ix')
    end
  elseif IX_LOW then
    due = math.min(IX, now + RECHECK)
    redis.call('HSET', K_SEM, 'ix', due)
  end
  t[#t + 1] = due
  t[#t + 1] = {EV_D, EV_F}
  t[#t + 1] = LOCAL_GRANTS
  return t
end

-- an error reply (in-band, see the header)
local function fail(code, conf, now)
  return done(conf, now, {code})
end

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
    local lid = redis.call('HGET', K_IDEM, k)
    local raw = lid and redis.call('HGET', K_LEASES, lid)
    if raw then return {'ok', raw} end
  end
  if w > conf.max then return {E_WEIGHT_TOO_LARGE, ''} end
  -- no barging: a live waiter ahead in the same domain blocks the grant
  if not head(conf, c, now) and fits(conf, c, w) then
    return {'ok', (new_lease(id, c, w, ttl, k, now, nil, nil, a[i + 8]))}
  end
  if wait <= 0 then return {'no_permit', ''} end
  local seq = redis.call('HINCRBY', K_SEM, 'wseq', 1)
  local wt = {id = id, c = c, w = w, ttl = ttl, k = k, n = a[i + 6], d = now + wait + tonumber(a[i + 7]), s = seq}
  if a[i + 8] ~= '' then wt.ss = a[i + 8] end
  redis.call('HSET', K_WDATA, id, cjson.encode(wt))
  redis.call('ZADD', K_WAITERS, seq, id)
  redis.call('ZADD', K_CQ, 0, cq_member(wt))
  redis.call('ZADD', K_WDL, wt.d, id)
  due_add(wt.d)
  redis.call('HINCRBY', K_WCOUNT, 'c:' .. c, 1)
  WN = set_counter('wn', 1)
  return {'wait', ''}
end

-- release of a live lease: 'ok' and the lease JSON as it was, or
-- SD_LEASE_NOT_FOUND (unknown, released or expired). Releasing the lease
-- of an inflight job ends the job done (a Finished event); the freed
-- permits go to head waiters.
local function op_release(conf, now, id)
  local raw = redis.call('HGET', K_LEASES, id)
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
  if redis.call('HDEL', K_GRANTED, id) == 1 then
    redis.call('ZREM', K_WDL, id)
    local lease = redis.call('HGET', K_LEASES, id)
    if lease then return {'granted', lease} end
    return {'gone', ''}
  end
  local raw = redis.call('HGET', K_WDATA, id)
  if not raw then
    -- granted to this Store in another call's reply (the lease has the
    -- waiter's id): the caller may take it from here as well
    local lease = redis.call('HGET', K_LEASES, id)
    if lease then return {'granted', lease} end
    return {'gone', ''}
  end
  if not cancel then return {'waiting', ''} end
  local w = cjson.decode(raw)
  unqueue(w, false)
  grant_domain(conf, w.c, now)
  return {'cancelled', ''}
end

-- {job id hex32, record, lease JSON or ''} of a job, nil when unknown
local function job_view(seq)
  local raw = redis.call('HGET', K_JOBS, seq)
  if not raw then return nil end
  local m = cjson.decode(string.sub(raw, 1, string.find(raw, '\n', 1, true) - 1))
  local lease = ''
  if m.l then lease = redis.call('HGET', K_LEASES, m.l) or '' end
  return {job_id(seq), raw, lease}
end

-- does a job id's salt belong to this semaphore (as created now)?
local function salt_ok(salt)
  return salt ~= '' and redis.call('HGET', K_SEM, 'js') == salt
end

-- ---------------------------------------------------------------- job operations
--
-- Like the lease operations (run after load_conf and expire, no done()),
-- they return {status, ...} with the job's seq in field v: batch.lua
-- appends the job's view as at the end of the call.

-- enqueue (args a[i..i+5]: job-id salt used if the semaphore has none
-- yet, channel, payload (raw JSON), idempotency key (''), max scheduled
-- jobs of the semaphore (0: no limit), parent JobRef JSON {s,i[,h]} ('')):
-- {'ok', created 0/1} + v, the existing job of the idempotency key with
-- created 0, or SD_QUEUE_FULL
local function op_enqueue(conf, now, a, i)
  local c, k, maxq = a[i + 1], a[i + 3], tonumber(a[i + 4])
  if k ~= '' then
    local old = redis.call('HGET', K_JIDEM, k)
    if old and redis.call('HEXISTS', K_JOBS, old) == 1 then return {'ok', 0, v = tonumber(old)} end
  end
  if maxq > 0 and JQ >= maxq then return {E_QUEUE_FULL, ''} end
  if redis.call('HSETNX', K_SEM, 'js', a[i]) == 1 then JOB_SALT = a[i] end
  local seq = redis.call('HINCRBY', K_SEM, 'jn', 1)
  local m = {ca = now}
  if c ~= DEFAULT_CHANNEL then m.c = c end
  if k ~= '' then
    m.k = k
    redis.call('HSET', K_JIDEM, k, seq)
  end
  if a[i + 5] ~= '' then m.p = cjson.decode(a[i + 5]) end
  job_schedule(seq, m, false, now)
  m.ua = nil -- = ca until the first change
  job_save(seq, m, a[i + 2])
  return {'ok', 1, v = seq}
end


-- transition: one action on a job (args a[i..i+9]: job-id salt, job seq,
-- action (delivered release fail retry suspend cancel requeue handoff),
-- lease id the job must still hold ('' = no check), route, error, hold ttl
-- ms (0: none), child JobRef JSON {s,i[,h]} (''), and for delivered the
-- session the job's lease is bound to ('' none: an earlier binding ends)
-- and the channel of its subscription): {'ok'} + v, or
-- SD_JOB_NOT_FOUND, SD_STALE_LEASE, {'SD_INVALID_STATE', message}
local function op_transition(conf, now, a, i)
  local seq = tonumber(a[i + 1])
  local m, pay
  if salt_ok(a[i]) then m, pay = job_load(seq) end
  if not m then return {E_JOB_NOT_FOUND, ''} end
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
    local raw = redis.call('HGET', K_LEASES, m.l)
    if not raw then return end
    local l = cjson.decode(raw)
    l.ttl, l.e = ttl, now + ttl
    redis.call('HSET', K_LEASES, m.l, cjson.encode(l))
    redis.call('ZADD', K_HOLDERS, l.e, m.l)
    due_add(l.e)
  end
  local terminal = m.s == 'D' or m.s == 'E' or m.s == 'T' or m.s == 'C'
  if act == ACT_REQUEUE then
    if not terminal then return invalid() end
    redis.call('ZREM', K_JFIN, seq)
    m.a, m.e, m.r, m.h, m.fa = nil, nil, nil, nil, nil
    job_schedule(seq, m, false, now)
    job_save(seq, m, pay)
  elseif act == ACT_CANCEL then
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
    elseif act == ACT_RETRY then
      free()
      local msg = a[i + 5]
      if msg == '' then msg = string.format(MSG_GAVE_UP, m.a or 0) end
      job_retry(conf, seq, m, pay, msg, now)
    elseif act == ACT_SUSPEND then
      free()
      local n = (m.a or 0) - 1
      if n <= 0 then n = nil end
      m.a = n
      job_schedule(seq, m, true, now)
      job_save(seq, m, pay)
      redis.call('HSET', K_SEM, 'susp', 1, 'ua', now)
      conf.susp = true
    else
      return {E_INVALID_STATE, 'unknown action ' .. act}
    end
  end
  return {'ok', v = seq}
end
