-- acquire.lua: grant a lease, or enqueue a waiter (lib.lua is prepended).
-- Queued jobs are dispatched after the caller is served (live callers
-- first).
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..3] as in lib.lua
-- ARGV[4] lease id (also the waiter id when it waits)
-- ARGV[5] channel
-- ARGV[6] weight (>= 1)
-- ARGV[7] ttl ms (0: the semaphore's leaseTimeout, else 60 s)
-- ARGV[8] idempotency key ('' for none)
-- ARGV[9] wait ms (0: answer at once)
-- ARGV[10] owning node id (where a later grant is published)
-- ARGV[11] slack ms added to the waiter's deadline (now + wait + slack)
--
-- Returns {status, lease JSON or '', due, events} (lib.lua done): status
-- 'ok' (granted, or the live lease of the same idempotency key), 'wait'
-- (enqueued), 'no_permit', SD_SEMAPHORE_NOT_FOUND or SD_WEIGHT_TOO_LARGE.
local conf = load_conf()
if not conf then return fail('SD_SEMAPHORE_NOT_FOUND') end
local id, c, w = ARGV[4], ARGV[5], tonumber(ARGV[6])
local ttl, k, wait = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local now = now_ms()
expire(conf, now)
if w > conf.max then return fail('SD_WEIGHT_TOO_LARGE', conf, now) end
if ttl <= 0 then ttl = conf.lt end
if not ttl or ttl <= 0 then ttl = DEFAULT_TTL end

if k ~= '' then
  local lid = redis.call('HGET', K_IDEM, k)
  local raw = lid and redis.call('HGET', K_LEASES, lid)
  if raw then return done(conf, now, {'ok', raw}) end
end

-- no barging: a live waiter ahead in the same domain blocks the grant
if not head(conf, c, now) and fits(conf, c, w) then
  local raw = new_lease(id, c, w, ttl, k, now)
  return done(conf, now, {'ok', raw})
end

if wait <= 0 then return done(conf, now, {'no_permit', ''}) end

local seq = redis.call('HINCRBY', K_SEM, 'wseq', 1)
local wt = {id = id, c = c, w = w, ttl = ttl, k = k, n = ARGV[10], d = now + wait + tonumber(ARGV[11]), s = seq}
redis.call('HSET', K_WDATA, id, cjson.encode(wt))
redis.call('ZADD', K_WAITERS, seq, id)
redis.call('ZADD', K_CQ, 0, cq_member(wt))
redis.call('ZADD', K_WDL, wt.d, id)
redis.call('HINCRBY', K_WCOUNT, 'c:' .. c, 1)
DIRTY = true
return done(conf, now, {'wait', ''})
