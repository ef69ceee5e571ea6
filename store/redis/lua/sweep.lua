-- sweep.lua: periodic check of one semaphore (a function of the function library (lib_*.lua)): drop
-- expired leases (an expired job lease sends its job back to its queue or
-- to timeout), expired waiters (and the leases of granted waiters that were
-- never claimed before their deadline: their caller is gone), grant head
-- waiters of every domain, dispatch queued jobs, and forget terminal jobs
-- past their retention.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
--
-- Returns {'ok', expired leases, gone, rate delay, due, events, grants}: gone is 1 when the
-- semaphore does not exist; due is the next due time (0: nothing pending).
local conf = load_conf()
if not conf then return {'ok', 0, 1, 0, 0, {{}, {}}, {}} end
IX = 0 -- look at every lease whatever ix says; done() sets ix exactly
local now = now_ms()
local expired = expire(conf, now)
for _, id in ipairs(redis.call('ZRANGE', K_WDL, '-inf', now, 'BYSCORE')) do
  if hexists(K_GRANTED, id) == 1 then
    drop_lease(id)
    hdel(K_GRANTED, id)
    redis.call('ZREM', K_WDL, id)
  else
    local raw = hget(K_WDATA, id)
    if raw then unqueue(cjson.decode(raw), false) else redis.call('ZREM', K_WDL, id) end
  end
end
recount() -- the counters of the semaphore's hash, from the data (see U)
grant_all(conf, now)
trim_finished(now, true)
dispatch(conf, now, nil, true)
IX_EXACT = true
return done(conf, now, {'ok', expired, 0}, true)
