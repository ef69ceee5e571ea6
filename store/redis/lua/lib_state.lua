-- lib_state.lua: the first part of the helpers shared by every
-- per-semaphore operation: the keys, the per-call state, the semaphore's
-- config and counters. The helpers are split by concern into the lib_*.lua
-- files, concatenated in the order scripts.go lists once (libParts): a
-- part uses only what the parts before it define.
--
-- Go (scripts.go) builds one Redis function library from these parts and the
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
--   KEYS[17] jfin       zset: job seq -> finish time (ms), done and cancelled jobs (retention)
--   KEYS[18] jidem      hash: job idempotency key -> job seq
--   KEYS[19] sbind      zset, all scores 0: what websocket sessions hold here,
--                       "<session>\0L<lease id>" (a sync lease) and
--                       "<session>\0J<channel>\0<job id>" (a job delivered to
--                       it through its subscription to channel): a ZLEXCOUNT of
--                       "<session>\0J<channel>\0" is that subscription's load
--   KEYS[20] rlog       zset, all scores 0: the rate windows' grants (lib_rate.lua)
--   KEYS[21] rused      hash: the rate windows' running totals (lib_rate.lua)
--   KEYS[22] subs       hash: the subscriber registry, "<session>\0<channel>" ->
--                       "<prefetch> <node>" (node '' while the session is lost):
--                       the room jobs are dispatched by (lib_dispatch.lua room_for)
--   KEYS[23] jfail      zset: job seq -> finish time (ms), error and timeout jobs (retention)
--   KEYS[24] jdly       zset: hex16(job seq) -> runAt (ms), the delayed jobs (lib_jobs.lua job_delay)
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
local K_RLOG, K_RUSED
local K_SUBS
local K_JFAIL
local K_JDLY
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
-- the subscriber registry of this call's semaphore with each entry's load,
-- read once by the first dispatch that needs it (lib_dispatch.lua room)
local ROOM
-- the records of the jobs this call ended and deleted at once (retention
-- 0), by seq: batch.lua still shows them in its results
local GONE

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
-- the delayed jobs (lib_jobs.lua job_delay): JD how many (sem "jd"), DN
-- the earliest runAt (sem "dn", 0: none)
local JD, DN
-- the rate of this call's semaphore, set by load_conf (lib_rate.lua): RL
-- units per RP ms (RL 0: none), RN the instant (ms) a domain blocked by the
-- rate gets room (hash "rn", 0: none); RATE_AT the earliest such instant
-- this call found (math.huge: none)
local RL, RP, RN, RATE_AT
-- the retention (ms) of this call's semaphore, set by load_conf: RET_D of
-- done and cancelled jobs, RET_F of error and timeout jobs (store.Retention;
-- a semaphore stored without one has the defaults); FD its hash's "fd", the
-- earliest instant a terminal job may be due for deletion (0: no terminal
-- job, nil: unknown), see trim_finished
local RET_D, RET_F, FD

-- sets the per-call state; every registered function calls it first
local function begin(keys, args)
  KEYS, ARGV = keys, args
  K_SEM, K_HOLDERS, K_LEASES, K_USED, K_FENCE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  K_WAITERS, K_CQ, K_WDATA, K_WDL, K_WCOUNT = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
  K_GRANTED, K_IDEM = KEYS[11], KEYS[12]
  K_JOBS, K_JQ, K_JCH, K_JCNT, K_JFIN, K_JIDEM = KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17], KEYS[18]
  K_SBIND = KEYS[19]
  K_RLOG, K_RUSED = KEYS[20], KEYS[21]
  K_SUBS, K_JFAIL, K_JDLY = KEYS[22], KEYS[23], KEYS[24]
  NODE_PREFIX, LID_RAND, ID_SUFFIX, CALLER = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
  LOCAL_GRANTS = {}
  EV_D, EV_F, TOUCHED, JOB_SALT, ROOM = {}, {}, {}, nil, nil
  GONE = {}
  IX, IX_LOW, IX_EXACT = math.huge, false, false
  U, WN, JQ = 0, 0, 0
  JD, DN = 0, 0
  RL, RP, RN, RATE_AT = 0, 0, 0, math.huge
  cache_reset()
end

-- adds d to the counter field f of the semaphore's hash; returns the new
-- value (a counter at 0 is not stored)
local function set_counter(f, d)
  local v = hincrby(K_SEM, f, d)
  if v <= 0 then
    hdel(K_SEM, f)
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

-- Refuses a semaphore whose layout v ("v" of its hash) this build cannot
-- read: one written by a newer release (a number above LAYOUT, or
-- anything else this build does not know). It raises SD_LAYOUT_NEWER
-- before the call writes anything (the hash cache is never flushed), so
-- an older instance beside newer ones during a rolling upgrade or a
-- rollback refuses such a semaphore instead of misreading and rewriting
-- it. An older layout (absent, or a number below LAYOUT) is upgraded by
-- load_conf.
local function layout_check(v)
  if v == false or v == nil or v == LAYOUT then return end
  local n = tonumber(v)
  if n and n < tonumber(LAYOUT) and n == math.floor(n) then return end
  error({err = E_LAYOUT_NEWER .. ' ' .. string.format(
    'the data of this semaphore has layout %s; this build reads layouts up to %s', tostring(v), LAYOUT)})
end

-- layout_check of the semaphore's hash, read straight from Redis: for the
-- calls that write before load_conf (put_semaphore, delete_semaphore,
-- set_sub)
local function layout_guard()
  layout_check(redis.call('HGET', K_SEM, 'v'))
end

-- the counters of the semaphore's hash (see U) and ix, computed from the
-- data; sets them in the hash
local function recount()
  local u, byc = 0, hall('HGETALL', K_USED)
  for i = 1, #byc, 2 do
    if string.sub(byc[i], 1, 2) == 'c:' then u = u + tonumber(byc[i + 1]) end
  end
  hdel(K_USED, 't') -- layout 1 kept the total here
  U, WN = u, redis.call('ZCARD', K_WAITERS)
  JQ = 0
  local jc = hall('HGETALL', K_JCNT)
  for i = 1, #jc, 2 do
    if string.sub(jc[i], 1, 2) == 'q:' then JQ = JQ + tonumber(jc[i + 1]) end
  end
  hdel(K_JCNT, 'q') -- layout 1 kept the total here
  for f, v in pairs({u = U, wn = WN, jq = JQ}) do
    if v > 0 then hset(K_SEM, f, v) else hdel(K_SEM, f) end
  end
  IX = 0 -- unknown: expire() looks, done() sets ix from the data
  hdel(K_SEM, 'ix')
end

-- config of the semaphore, or nil when it does not exist. A semaphore
-- written by an earlier layout gets its counters computed first.
-- the fields load_conf reads (the last ones only cached, for the calls
-- that need them)
local CONF_FIELDS = {'max', 'scope', 'lt', 'ma', 'susp', 'ix', 'u', 'wn', 'jq', 'v', 'rl', 'rp', 'rn',
  'wr', 'rr', 'js', 'jn', 'dmore', 'rd', 'rf', 'fd', 'jd', 'dn', 'rb', 'rm'}

local function load_conf()
  local v
  if HC[K_SEM] then -- the call wrote the hash already (put_semaphore)
    v = hmget(K_SEM, unpack(CONF_FIELDS))
  else
    -- the first read of the call: straight into the cache (the common
    -- case, without hmget's per-field work)
    v = redis.call('HMGET', K_SEM, unpack(CONF_FIELDS))
    local c = hc(K_SEM)
    for i = 1, #CONF_FIELDS do c.v[CONF_FIELDS[i]] = v[i] end
  end
  if not v[1] then return nil end
  IX = tonumber(v[6]) or math.huge
  RL, RP, RN = tonumber(v[11] or 0) or 0, tonumber(v[12] or 0) or 0, tonumber(v[13] or 0) or 0
  U, WN, JQ = tonumber(v[7] or 0), tonumber(v[8] or 0), tonumber(v[9] or 0)
  -- by name from the cache HMGET filled (positions shift as fields come)
  RET_D = tonumber(hget(K_SEM, 'rd') or RETENTION_DONE)
  RET_F = tonumber(hget(K_SEM, 'rf') or RETENTION_FAILED)
  local fd = hget(K_SEM, 'fd')
  FD = fd and tonumber(fd) or nil
  JD, DN = tonumber(hget(K_SEM, 'jd') or 0), tonumber(hget(K_SEM, 'dn') or 0)
  if v[10] ~= LAYOUT then
    layout_check(v[10])
    recount()
    hset(K_SEM, 'v', LAYOUT)
  end
  -- wr: the worker route (store.WorkerRoute), "<fallback 0/1><channel>"
  local wr
  if v[14] then wr = {fb = string.sub(v[14], 1, 1) == '1', c = string.sub(v[14], 2)} end
  -- rb, rm: the retry backoff and its cap, ms (store.RetryPolicy; absent: none)
  return {max = tonumber(v[1]), scope = v[2], lt = tonumber(v[3]), ma = tonumber(v[4] or 0) or 0,
    susp = v[5] == '1', wr = wr, rb = tonumber(hget(K_SEM, 'rb') or 0), rm = tonumber(hget(K_SEM, 'rm') or 0)}
end

local function used(field)
  return tonumber(hget(K_USED, field) or 0)
end

local function add_used(c, delta)
  if delta < 0 then TOUCHED[c] = true end
  U = set_counter('u', delta)
  local f = 'c:' .. c
  if hincrby(K_USED, f, delta) <= 0 then hdel(K_USED, f) end
end

-- does weight w fit in channel c's capacity domain?
local function fits(conf, c, w)
  if conf.scope == SCOPE_CHANNEL then return used('c:' .. c) + w <= conf.max end
  return U + w <= conf.max
end
