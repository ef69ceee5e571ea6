-- release.lua: end a live lease, grant the freed permits to head waiters,
-- then dispatch queued jobs (lib.lua is prepended). Releasing the lease of
-- an inflight job ends the job done (a Finished event).
--
-- KEYS: the 18 semaphore keys listed in lib.lua.
-- ARGV[1..3] as in lib.lua
-- ARGV[4] lease id
--
-- Returns {'ok', lease JSON as it was, due, events}, or SD_LEASE_NOT_FOUND
-- for an unknown, released or expired lease (and nothing else changes but
-- what any script does: expiry and dispatch).
local conf = load_conf()
if not conf then return fail('SD_LEASE_NOT_FOUND') end
local id = ARGV[4]
local now = now_ms()
expire(conf, now)
local raw = redis.call('HGET', K_LEASES, id)
if not raw then return fail('SD_LEASE_NOT_FOUND', conf, now) end
local l = drop_lease(id)
if l.j then
  local m, pay = job_load(l.j)
  if m and m.l == id then
    count_inflight(job_chan(m), -1)
    job_finish(l.j, m, pay, 'D', '', now)
  end
end
grant_domain(conf, l.c, now)
return done(conf, now, {'ok', raw})
