-- acquire.lua: grant a lease, or enqueue a waiter (lib.lua is prepended).
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
-- ARGV[2] lease id (also the waiter id when it waits)
-- ARGV[3] channel
-- ARGV[4] weight (>= 1)
-- ARGV[5] ttl ms (0: the semaphore's leaseTimeout, else 60 s)
-- ARGV[6] idempotency key ('' for none)
-- ARGV[7] wait ms (0: answer at once)
-- ARGV[8] owning node id (where a later grant is published)
-- ARGV[9] slack ms added to the waiter's deadline (now + wait + slack)
--
-- Returns {status, lease JSON or '', due}: status 'ok' (granted, or the live
-- lease of the same idempotency key), 'wait' (enqueued) or 'no_permit';
-- due > 0 is the semaphore's next due time for the sweep index (0: no
-- index update needed). Errors SD_SEMAPHORE_NOT_FOUND, SD_WEIGHT_TOO_LARGE.
local conf = load_conf()
if not conf then return redis.error_reply('SD_SEMAPHORE_NOT_FOUND') end
local id, c, w = ARGV[2], ARGV[3], tonumber(ARGV[4])
local ttl, k, wait = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
if w > conf.max then return redis.error_reply('SD_WEIGHT_TOO_LARGE') end
if ttl <= 0 then ttl = conf.lt end
if not ttl or ttl <= 0 then ttl = 60000 end
local now = now_ms()
local _, n = expire(conf, now)

if k ~= '' then
  local lid = redis.call('HGET', K_IDEM, k)
  local raw = lid and redis.call('HGET', K_LEASES, lid)
  if raw then
    local due = 0
    if n > 0 then due = next_due() end
    return {'ok', raw, due}
  end
end

-- no barging: a live waiter ahead in the same domain blocks the grant
if not head(conf, c, now) and fits(conf, c, w) then
  local raw = new_lease(id, c, w, ttl, k, now)
  return {'ok', raw, next_due()}
end

if wait <= 0 then
  local due = 0
  if n > 0 then due = next_due() end
  return {'no_permit', '', due}
end

local seq = redis.call('HINCRBY', K_SEM, 'wseq', 1)
local wt = {id = id, c = c, w = w, ttl = ttl, k = k, n = ARGV[8], d = now + wait + tonumber(ARGV[9]), s = seq}
redis.call('HSET', K_WDATA, id, cjson.encode(wt))
redis.call('ZADD', K_WAITERS, seq, id)
redis.call('ZADD', K_CQ, 0, cq_member(wt))
redis.call('ZADD', K_WDL, wt.d, id)
redis.call('HINCRBY', K_WCOUNT, 'c:' .. c, 1)
return {'wait', '', next_due()}
