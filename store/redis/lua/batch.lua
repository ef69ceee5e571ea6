-- batch.lua: the acquires, releases and waiter polls of one semaphore that
-- callers sent at about the same time, run one after the other in one call
-- (a function of the lib.lua library): one round trip, one clock read, one
-- expiry check and one dispatch of queued jobs (after every caller is
-- served) for all of them. A lone call is a batch of one.
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..4] as in lib.lua
-- ARGV[5..] the operations, in order, each a letter and its arguments:
--   'a' acquire: lease id (also the waiter id when it waits), channel,
--       weight (>= 1), ttl ms (0: the semaphore's leaseTimeout, else 60 s),
--       idempotency key ('' for none), wait ms (0: answer at once), owning
--       node id (where a later grant is published), slack ms added to the
--       waiter's deadline (now + wait + slack)
--   'r' release: lease id
--   'p' poll of a waiting acquire: waiter id
--
-- Returns {'ok', results, due, events, grants} (lib.lua done), results holding one
-- {status, lease JSON or ''} per operation (op_acquire, op_release,
-- op_claim). When the semaphore does not exist, every acquire and poll
-- gets SD_SEMAPHORE_NOT_FOUND and every release SD_LEASE_NOT_FOUND.
local conf = load_conf()
local now
if conf then
  now = now_ms()
  expire(conf, now)
end
local out, i = {}, 5
while i <= #ARGV do
  local op, r = ARGV[i], nil
  if op == 'a' then
    r = conf and op_acquire(conf, now, ARGV, i + 1) or {'SD_SEMAPHORE_NOT_FOUND', ''}
    i = i + 9
  elseif op == 'r' then
    r = conf and op_release(conf, now, ARGV[i + 1]) or {'SD_LEASE_NOT_FOUND', ''}
    i = i + 2
  elseif op == 'p' then
    r = conf and op_claim(conf, now, ARGV[i + 1], false) or {'SD_SEMAPHORE_NOT_FOUND', ''}
    i = i + 2
  else
    return redis.error_reply('batch: unknown operation ' .. tostring(op))
  end
  out[#out + 1] = r
end
return done(conf, now, {'ok', out})
