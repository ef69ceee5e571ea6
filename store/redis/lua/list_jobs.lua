-- list_jobs.lua: a page of a semaphore's jobs, oldest first (by seq), after
-- dropping expired leases, deleting terminal jobs past their retention and
-- dispatching (a function of the function library (lib_*.lua)). Jobs past
-- their retention are not listed.
--
-- Jobs are found by walking seqs upward from the cursor (or from the
-- semaphore's jlo hint: no job below it exists any more) with HMGET, and
-- filtered by status and channel; at most ARGV[9] seqs are walked per call,
-- so a page may come back short (even empty) with a cursor to go on from.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] status letter (S I D E T C) or '' for any
-- ARGV[6] channel or '' for any
-- ARGV[7] cursor: the seq after which to list ('' = start)
-- ARGV[8] limit (> 0), ARGV[9] seqs walked at most
--
-- Returns {'ok', {{job id hex32, record, lease JSON or ''}, ...}, next
-- cursor ('' at the end), due, events, grants}, or SD_SEMAPHORE_NOT_FOUND.
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
trim_finished(now)
dispatch(conf, now)
local st, ch, limit, budget = ARGV[5], ARGV[6], tonumber(ARGV[8]), tonumber(ARGV[9])
local after = 0
if ARGV[7] ~= '' then
  if not string.match(ARGV[7], '^%d+$') then return done(conf, now, {'ok', {}, ''}, true) end
  after = tonumber(ARGV[7])
end
local v = hmget(K_SEM, 'jn', 'jlo')
local jn, lo = tonumber(v[1] or 0), tonumber(v[2] or 1)
local from = after + 1
local fromlo = from <= lo
if fromlo then from = lo end
local items, last, firstlive, seq = {}, 0, nil, from
while seq <= jn and seq - from < budget do
  local hi = math.min(seq + 127, jn)
  local fields = {}
  for s = seq, hi do fields[#fields + 1] = s end
  local raws = hmget(K_JOBS, unpack(fields))
  for i = 1, #fields do
    local raw = raws[i]
    if raw then
      local s = fields[i]
      firstlive = firstlive or s
      local m = cjson.decode(string.sub(raw, 1, string.find(raw, '\n', 1, true) - 1))
      if (st == '' or m.s == st) and (ch == '' or job_chan(m) == ch) and not job_expired(m, now) then
        if #items == limit then
          if fromlo and firstlive > lo then hset(K_SEM, 'jlo', firstlive) end
          return done(conf, now, {'ok', items, tostring(last)}, true)
        end
        local lease = ''
        if m.l then lease = hget(K_LEASES, m.l) or '' end
        items[#items + 1] = {job_id(s), raw, lease}
        last = s
      end
    end
  end
  seq = hi + 1
end
if fromlo then
  local nlo = firstlive or seq
  if nlo > lo then hset(K_SEM, 'jlo', nlo) end
end
local next = ''
if seq <= jn then next = tostring(seq - 1) end
return done(conf, now, {'ok', items, next}, true)
