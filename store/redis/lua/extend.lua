-- extend.lua: move a live lease's expiry to now + ttl (it is a function of
-- the function library (lib_*.lua)). A job's lease keeps its job inflight longer.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] lease id
-- ARGV[6] ttl ms (<= 0: the semaphore's leaseTimeout, see lease_ttl)
--
-- Returns {'ok', lease JSON after the change, due, events, grants}, or
-- SD_LEASE_NOT_FOUND for an unknown, released or expired lease.
local conf = load_conf()
if not conf then return fail(E_LEASE_NOT_FOUND) end
local id, ttl = ARGV[5], lease_ttl(conf, tonumber(ARGV[6]))
local now = now_ms()
expire(conf, now)
local raw = hget(K_LEASES, id)
if not raw then return fail(E_LEASE_NOT_FOUND, conf, now) end
local l = cjson.decode(raw)
l.ttl = ttl
l.e = now + ttl
raw = cjson.encode(l)
hset(K_LEASES, id, raw)
redis.call('ZADD', K_HOLDERS, l.e, id)
due_add(l.e)
return done(conf, now, {'ok', raw})
