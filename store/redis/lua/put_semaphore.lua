-- put_semaphore.lua: create or replace a semaphore's config (it is a function of
-- the lib.lua library). Live leases are never revoked; a raised maxValue (or a scope
-- change) grants head waiters at once, then dispatches queued jobs.
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..3] as in lib.lua
-- ARGV[4] name, ARGV[5] maxValue, ARGV[6] scope, ARGV[7] leaseTimeout ms,
-- ARGV[8] maxAttempts, ARGV[9] onSessionLost, ARGV[10] onDeliveryError,
-- ARGV[11] extra (opaque JSON)
--
-- Returns {'ok', created (0/1), flat HGETALL of the semaphore hash, due, events}.
local created = redis.call('EXISTS', K_SEM) == 0
local now = now_ms()
redis.call('HSET', K_SEM, 'name', ARGV[4], 'max', ARGV[5], 'scope', ARGV[6], 'lt', ARGV[7],
  'ma', ARGV[8], 'osl', ARGV[9], 'ode', ARGV[10], 'extra', ARGV[11], 'ua', now)
if created then redis.call('HSET', K_SEM, 'ca', now, 'susp', 0) end
local conf = load_conf()
expire(conf, now)
grant_all(conf, now)
dispatch(conf, now, nil, true)
local c = 0
if created then c = 1 end
return done(conf, now, {'ok', c, redis.call('HGETALL', K_SEM)}, true)
