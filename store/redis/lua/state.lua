-- state.lua: a consistent snapshot of a semaphore's usage, taken after
-- dropping expired leases (granting the permits they held, dispatching
-- queued jobs); it is a function of the function library (lib_*.lua).
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
--
-- Returns {'ok', max, scope, used (flat HGETALL: "t"/"c:<channel>" ->
-- weight), wcount (flat HGETALL: "c:<channel>" -> waiters), waiters total,
-- jcnt (flat HGETALL: "q"/"q:<c>" queued, "d"/"d:<c>" delayed, "i"/"i:<c>"
-- inflight -> jobs), rate windows (flat:
-- channel or '' for the whole semaphore, units, next ms), rate delay, due,
-- events, grants}, or
-- SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
dispatch(conf, now)
local used = hall('HGETALL', K_USED)
local jobs = hall('HGETALL', K_JCNT)
if JQ > 0 then jobs[#jobs + 1] = 'q'; jobs[#jobs + 1] = tostring(JQ) end
if JD > 0 then jobs[#jobs + 1] = 'd'; jobs[#jobs + 1] = tostring(JD) end
if U > 0 then used[#used + 1] = 't'; used[#used + 1] = tostring(U) end
-- the rate windows: {channel ('' the whole semaphore), units, next ms (0:
-- empty)} flat, one per domain with grants in its window
local rate = {}
if RL > 0 then
  local doms = {}
  if conf.scope == SCOPE_CHANNEL then
    for _, f in ipairs(hall('HKEYS', K_RUSED)) do
      if string.sub(f, 1, 2) == 'nC' then doms[#doms + 1] = string.sub(f, 7) end
    end
  else
    doms[1] = ''
  end
  for _, c in ipairs(doms) do
    local u, nx = rate_state(conf, c, now)
    if u > 0 then
      rate[#rate + 1] = c; rate[#rate + 1] = u; rate[#rate + 1] = nx
    end
  end
end
return done(conf, now, {'ok', conf.max, conf.scope, used,
  hall('HGETALL', K_WCOUNT), redis.call('ZCARD', K_WAITERS), jobs, rate}, true)
