-- lib_dispatch.lua: the sweep index's due time, dispatching queued jobs
-- round-robin, and the reply every function ends with (done, fail) (part
-- of the function library, see lib_state.lua).

-- earliest holder expiry, waiter deadline or rate instant (ms), 0 when
-- there is none:
-- the time this semaphore is next due in the sweep index
local function next_due()
  local d = 0
  local h = redis.call('ZRANGE', K_HOLDERS, 0, 0, 'WITHSCORES')
  if h[2] then d = tonumber(h[2]) end
  local w = redis.call('ZRANGE', K_WDL, 0, 0, 'WITHSCORES')
  if w[2] then
    local x = tonumber(w[2])
    if d == 0 or x < d then d = x end
  end
  if RN > 0 and (d == 0 or RN < d) then d = RN end -- a domain waiting for rate room
  if DN > 0 and (d == 0 or DN < d) then d = DN end -- a delayed job
  return d
end

-- the channel after c (by name, wrapping) with scheduled jobs; nil: none
local function next_chan(c)
  local r
  if c ~= '' then r = redis.call('ZRANGE', K_JCH, '(' .. c, '+', 'BYLEX', 'LIMIT', 0, 1)[1] end
  return r or redis.call('ZRANGE', K_JCH, '-', '+', 'BYLEX', 'LIMIT', 0, 1)[1]
end

-- the subscriber registry (K_SUBS) with each entry's load, the jobs bound
-- on it: {s session, c channel, p prefetch, n node ('' lost), load} each,
-- read once a call
local function subs_load()
  if ROOM then return ROOM end
  ROOM = {}
  local all = redis.call('HGETALL', K_SUBS)
  for i = 1, #all, 2 do
    local z = string.find(all[i], '\0', 1, true)
    local p, n = string.match(all[i + 1], '^(%d+) (.*)$')
    if z and p then
      local s, c = string.sub(all[i], 1, z - 1), string.sub(all[i], z + 1)
      local b = s .. '\0J' .. c
      ROOM[#ROOM + 1] = {s = s, c = c, p = math.max(tonumber(p), 1), n = n,
        load = redis.call('ZLEXCOUNT', K_SBIND, '[' .. b .. '\0', '(' .. b .. '\1')}
    end
  end
  return ROOM
end

-- the registry entry a job routed to channel rc is bound to at dispatch
-- (store.WorkerRoute): among connected sessions whose subscription to rc
-- (preferred) or to every channel has fewer bound jobs than its prefetch,
-- the least loaded, ties by session id; nil when none has room
local function worker_for(rc)
  local r = subs_load()
  local exact = {}
  for _, e in ipairs(r) do
    if e.c == rc then exact[e.s] = true end
  end
  local best
  for _, e in ipairs(r) do
    if e.n ~= '' and (e.c == rc or (e.c == '' and not exact[e.s])) and e.load < e.p and
      (not best or e.load < best.load or (e.load == best.load and e.s < best.s)) then
      best = e
    end
  end
  return best
end

-- moves the head job of channel c to inflight with a new lease of weight
-- 1, bound to worker w (a subs_load entry) when given; false when the
-- queue held no scheduled job (it is dropped then)
local function dispatch_one(conf, c, now, w)
  while true do
    local seq, pos = q_pop(c)
    if not seq then
      q_drop(c)
      return false
    end
    local m, pay = job_load(seq)
    if m and queued_at(m, pos) then
      rate_take(conf, c, 1, now)
      local lraw, l = new_lease(nil, c, 1, lease_ttl(conf, 0), '', now, seq)
      m.s, m.q, m.l, m.a, m.ua = 'I', nil, l.id, (m.a or 0) + 1, now
      if w then
        bind_job(seq, m, w.s, w.c)
        m.r, m.sn = ROUTE_WEBSOCKET, w.n
      end
      unqueued(c)
      count_inflight(c, 1)
      ev(EV_D, seq, job_save(seq, m, pay), lraw)
      return true
    end
  end
end

-- the channels to dispatch from, in round-robin order after the cursor
-- at: every channel with scheduled jobs (nil: walk the jch zset), or with
-- scope channel and not all, only the touched ones (a list)
local function dispatch_order(conf, at, all)
  -- with a worker route, a job's end frees room for every channel
  if all or conf.wr or conf.scope ~= SCOPE_CHANNEL or hexists(K_SEM, 'dmore') == 1 then return nil end
  -- ranks in jch give the byte order of names (Lua's < may follow the locale)
  local k = 0
  if at ~= '' then k = redis.call('ZLEXCOUNT', K_JCH, '-', '[' .. at) end
  local after, before = {}, {}
  for c in pairs(TOUCHED) do
    local r = redis.call('ZRANK', K_JCH, c)
    if r then
      if r >= k then after[#after + 1] = {r, c} else before[#before + 1] = {r, c} end
    end
  end
  local byrank = function(x, y) return x[1] < y[1] end
  table.sort(after, byrank)
  table.sort(before, byrank)
  local list = {}
  for _, x in ipairs(after) do list[#list + 1] = x[2] end
  for _, x in ipairs(before) do list[#list + 1] = x[2] end
  return list
end

-- dispatches up to max scheduled jobs that fit (SPEC §1): channels served
-- round-robin by name after the cursor (the channel served last), FIFO
-- within a channel, none while suspended, none into a capacity domain with
-- a live sync waiter. all: look at every channel (a config change, a
-- resume, the sweep), not only the touched ones. Returns how many. When
-- it stops at max, the next dispatch looks at every channel (dmore).
local function dispatch(conf, now, max, all)
  if conf.susp or JQ <= 0 then return 0 end
  if not max or max <= 0 then max = DISPATCH_BATCH end
  local n, at, served = 0, hget(K_SEM, 'rr') or '', nil
  local list = dispatch_order(conf, at, all)
  if list and #list == 0 then return 0 end
  local blocked, nblocked, i = {}, 0, 0
  while n < max do
    local c
    if list then
      i = i % #list + 1
      c = list[i]
    else
      c = next_chan(at) -- a channel with scheduled jobs
      if not c then break end
    end
    if blocked[c] then
      if nblocked >= (list and #list or redis.call('ZCARD', K_JCH)) then break end
    elseif list and redis.call('ZSCORE', K_JCH, c) == false then
      blocked[c], nblocked = true, nblocked + 1 -- its queue emptied
    elseif head(conf, c, now) or not fits(conf, c, 1) or not room(conf, c, 1, now) then
      if conf.scope ~= SCOPE_CHANNEL then break end -- one domain: if one cannot, none can
      blocked[c], nblocked = true, nblocked + 1
    else
      local w
      if conf.wr then w = worker_for(conf.wr.c ~= '' and conf.wr.c or c) end
      if conf.wr and not w and not conf.wr.fb then
        blocked[c], nblocked = true, nblocked + 1 -- its head waits for a worker with room
      elseif dispatch_one(conf, c, now, w) then
        n, served = n + 1, c
      end
    end
    at = c
  end
  if served then hset(K_SEM, 'rr', served) end
  if n >= max then
    hset(K_SEM, 'dmore', 1)
  elseif list == nil then
    hdel(K_SEM, 'dmore')
  end
  return n
end

-- the reply of a per-semaphore script: dispatches what fits now (unless
-- nodispatch; conf nil: the semaphore does not exist), then appends due
-- and events to t
local function done(conf, now, t, nodispatch)
  if conf and not nodispatch then dispatch(conf, now) end
  -- a domain this call found blocked by the rate: its instant is kept (rn)
  -- and due in the sweep index, and the caller sets a timer for it
  local rate_in = 0
  if conf and RATE_AT < math.huge then
    if RN <= now or RATE_AT < RN then
      RN = RATE_AT
      hset(K_SEM, 'rn', RN)
      due_add(RN)
    end
    rate_in = math.max(1, RATE_AT - now)
  end
  -- the earliest delayed job: the caller's timer runs dispatch.lua then
  if conf and DN > 0 then
    local d = math.max(1, DN - now)
    if rate_in == 0 or d < rate_in then rate_in = d end
  end
  local due = 0
  if conf and (IX_EXACT or IX <= now) then
    local e = next_due()
    -- the sweep also comes back when the next terminal job is due for
    -- deletion (FD, after a sweep's trim), and at once when a trim left
    -- some due (a backlog drains at the sweep's pace, with nothing else
    -- happening on the semaphore; see trim_finished)
    if FD and FD > 0 and (IX_EXACT or FD <= now) and (e == 0 or FD < e) then e = math.max(FD, now) end
    if e > 0 then
      due = math.min(e, now + RECHECK)
      hset(K_SEM, 'ix', due)
    else
      hdel(K_SEM, 'ix')
    end
  elseif IX_LOW then
    due = math.min(IX, now + RECHECK)
    hset(K_SEM, 'ix', due)
  end
  t[#t + 1] = rate_in
  t[#t + 1] = due
  t[#t + 1] = {EV_D, EV_F}
  t[#t + 1] = LOCAL_GRANTS
  return t
end

-- an error reply (in-band, see the header)
local function fail(code, conf, now)
  return done(conf, now, {code})
end
