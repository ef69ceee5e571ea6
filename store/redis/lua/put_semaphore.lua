-- put_semaphore.lua: create or replace a semaphore's config (lib.lua is
-- prepended). Live leases are never revoked; a raised maxValue (or a scope
-- change) grants head waiters at once.
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
-- ARGV[2] name, ARGV[3] maxValue, ARGV[4] scope, ARGV[5] leaseTimeout ms,
-- ARGV[6] maxAttempts, ARGV[7] onSessionLost, ARGV[8] onDeliveryError,
-- ARGV[9] extra (opaque JSON)
--
-- Returns {created (0/1), flat HGETALL of the semaphore hash, due}.
local created = redis.call('EXISTS', K_SEM) == 0
local now = now_ms()
redis.call('HSET', K_SEM, 'name', ARGV[2], 'max', ARGV[3], 'scope', ARGV[4], 'lt', ARGV[5],
  'ma', ARGV[6], 'osl', ARGV[7], 'ode', ARGV[8], 'extra', ARGV[9], 'ua', now)
if created then redis.call('HSET', K_SEM, 'ca', now, 'susp', 0) end
local conf = load_conf()
local _, n = expire(conf, now)
n = n + grant_all(conf, now)
local due = 0
if n > 0 then due = next_due() end
local c = 0
if created then c = 1 end
return {c, redis.call('HGETALL', K_SEM), due}
