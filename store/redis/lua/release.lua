-- release.lua: end a live lease and grant the freed permits to head
-- waiters (lib.lua is prepended).
--
-- KEYS: the 12 semaphore keys listed in lib.lua.
-- ARGV[1] node channel prefix (lib.lua)
-- ARGV[2] lease id
--
-- Returns {lease JSON as it was, due}; due > 0 when waiters were granted
-- (the next due time for the sweep index). Error SD_LEASE_NOT_FOUND for an
-- unknown, released or expired lease (and nothing else changes).
local conf = load_conf()
if not conf then return redis.error_reply('SD_LEASE_NOT_FOUND') end
local id = ARGV[2]
local now = now_ms()
local _, n = expire(conf, now)
local raw = redis.call('HGET', K_LEASES, id)
if not raw then
  if n > 0 then return {'', next_due()} end
  return redis.error_reply('SD_LEASE_NOT_FOUND')
end
local l = drop_lease(id)
n = n + grant_domain(conf, l.c, now)
local due = 0
if n > 0 then due = next_due() end
return {raw, due}
