-- put_semaphore.lua: create or replace a semaphore's config (it is a function of
-- the function library (lib_*.lua)). Live leases are never revoked; a raised maxValue (or a scope
-- change) grants head waiters at once, then dispatches queued jobs.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] name, ARGV[6] maxValue, ARGV[7] scope, ARGV[8] leaseTimeout ms,
-- ARGV[9] maxAttempts, ARGV[10] onSessionLost, ARGV[11] onDeliveryError,
-- ARGV[12] extra (opaque JSON), ARGV[13] rate limit (0: none), ARGV[14]
-- rate period ms, ARGV[15] worker route "<fallback 0/1><channel>" ('': none),
-- ARGV[16] retention of done and cancelled jobs ms, ARGV[17] retention of
-- error and timeout jobs ms, ARGV[18] retry backoff ms (0: none), ARGV[19]
-- its cap ms
--
-- Returns {'ok', created (0/1), flat HGETALL of the semaphore hash, due, events, grants}.
layout_guard()
local created = redis.call('EXISTS', K_SEM) == 0
local now = now_ms()
local old_scope = hget(K_SEM, 'scope')
hset(K_SEM, 'name', ARGV[5], 'max', ARGV[6], 'scope', ARGV[7], 'lt', ARGV[8],
  'ma', ARGV[9], 'osl', ARGV[10], 'ode', ARGV[11], 'extra', ARGV[12], 'ua', now,
  'rd', ARGV[16], 'rf', ARGV[17])
if tonumber(ARGV[13]) > 0 then
  -- a changed limit or period keeps the grants in the window; a changed
  -- scope starts the windows anew (their domains changed)
  hset(K_SEM, 'rl', ARGV[13], 'rp', ARGV[14])
  if old_scope and old_scope ~= ARGV[7] then rate_clear() end
else
  hdel(K_SEM, 'rl', 'rp', 'rn')
  rate_clear()
end
if ARGV[15] ~= '' then hset(K_SEM, 'wr', ARGV[15]) else hdel(K_SEM, 'wr') end
if tonumber(ARGV[18]) > 0 then hset(K_SEM, 'rb', ARGV[18], 'rm', ARGV[19]) else hdel(K_SEM, 'rb', 'rm') end
if created then hset(K_SEM, 'ca', now, 'susp', 0, 'v', LAYOUT) end
local conf = load_conf()
expire(conf, now)
trim_finished(now, true) -- a changed retention: what it no longer keeps goes
grant_all(conf, now)
dispatch(conf, now, nil, true)
local c = 0
if created then c = 1 end
return done(conf, now, {'ok', c, hall('HGETALL', K_SEM)}, true)
