-- purge_jobs.lua: delete a semaphore's jobs in one status, scheduled or a
-- terminal one, after dropping expired leases and dispatching (it is a function of
-- the function library (lib_*.lua)). Scheduled jobs are found by walking the queues, terminal ones
-- through the finished set.
--
-- KEYS: the 22 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] status letter: S, D, E, T or C
--
-- Returns {'ok', jobs deleted, due, events, grants}, or SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
dispatch(conf, now)
local st, n = ARGV[5], 0
local function forget(seq, m)
  if m.k and hget(K_JIDEM, m.k) == tostring(seq) then hdel(K_JIDEM, m.k) end
  hdel(K_JOBS, seq)
  n = n + 1
end
if st == 'S' then
  for _, c in ipairs(redis.call('ZRANGE', K_JCH, 0, -1)) do
    local q = q_meta(c)
    if q then
      for cn = q.hc, q.tc do
        local s = hget(K_JQ, q_chunk(c, cn)) or ''
        local i0 = 0
        if cn == q.hc then i0 = q.hi end
        for i = i0, #s / QW - 1 do
          local seq = struct.unpack('>I6', s, i * QW + 1)
          local m = job_load(seq)
          if m and queued_at(m, cn * QCH + i) then forget(seq, m) end
        end
      end
    end
    q_drop(c)
    hdel(K_JCNT, 'q:' .. c)
  end
  hdel(K_JCNT, 'q')
  hdel(K_SEM, 'jq')
  JQ = 0
else
  for _, seq in ipairs(redis.call('ZRANGE', K_JFIN, 0, -1)) do
    local m = job_load(seq)
    if not m then
      redis.call('ZREM', K_JFIN, seq)
    elseif m.s == st then
      forget(seq, m)
      redis.call('ZREM', K_JFIN, seq)
    end
  end
end
return done(conf, now, {'ok', n}, true)
