-- purge_jobs.lua: delete a semaphore's jobs in one status, scheduled or a
-- terminal one, of one channel or of all, after dropping expired leases,
-- deleting terminal jobs past their retention and dispatching (it is a
-- function of the function library (lib_*.lua)). Scheduled jobs are found
-- by walking the queues, terminal ones through the finished sets (both:
-- an earlier release put every terminal job in jfin). A job past its
-- retention is deleted but not counted (it was gone already).
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] status letter: S, D, E, T or C
-- ARGV[6] channel, '' for every channel
--
-- Returns {'ok', jobs deleted, due, events, grants}, or SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
trim_finished(now)
dispatch(conf, now)
local st, ch, n = ARGV[5], ARGV[6], 0
if st == 'S' then
  local chans = {ch}
  if ch == '' then chans = redis.call('ZRANGE', K_JCH, 0, -1) end
  for _, c in ipairs(chans) do
    local q = q_meta(c)
    if q then
      for cn = q.hc, q.tc do
        local s = hget(K_JQ, q_chunk(c, cn)) or ''
        local i0 = 0
        if cn == q.hc then i0 = q.hi end
        for i = i0, #s / QW - 1 do
          local seq = struct.unpack('>I6', s, i * QW + 1)
          local m = job_load(seq)
          if m and queued_at(m, cn * QCH + i) then
            job_forget(seq, m)
            n = n + 1
          end
        end
      end
    end
    q_drop(c)
    -- the channel's scheduled jobs leave the total with it
    JQ = set_counter('jq', -tonumber(hget(K_JCNT, 'q:' .. c) or 0))
    hdel(K_JCNT, 'q:' .. c)
  end
  if ch == '' then
    hdel(K_JCNT, 'q')
    hdel(K_SEM, 'jq')
    JQ = 0
  end
  -- the delayed ones
  for _, mem in ipairs(redis.call('ZRANGE', K_JDLY, 0, -1)) do
    local seq = tonumber(mem, 16)
    local m = job_load(seq)
    if m and m.s == 'S' and m.ra and (ch == '' or job_chan(m) == ch) then
      undelay(seq, m)
      job_forget(seq, m)
      n = n + 1
    end
  end
else
  for _, k in ipairs({K_JFIN, K_JFAIL}) do
    for _, seq in ipairs(redis.call('ZRANGE', k, 0, -1)) do
      local m = job_load(seq)
      if not m or not job_terminal(m.s) then
        redis.call('ZREM', k, seq) -- left behind by an earlier release
      elseif m.s == st and (ch == '' or job_chan(m) == ch) then
        if not job_expired(m, now) then n = n + 1 end
        job_forget(seq, m)
        redis.call('ZREM', k, seq)
      end
    end
  end
end
return done(conf, now, {'ok', n}, true)
