-- lib_leases.lua: leases and waiters (part of the function library, see
-- lib_state.lua): creating and ending leases, session bindings, the FIFO
-- waiter queues and granting their heads.

local function chan_prefix(c)
  return string.format('%04d', #c) .. c
end

local function cq_member(w)
  return chan_prefix(w.c) .. string.format('%016d', w.s) .. w.id
end

-- creates a live lease and returns its JSON and the lease; id nil makes a
-- job lease id (lib header), j is the job seq of a job lease (nil for
-- sync), g 1 marks the lease granted to a waiter (it may sit in granted),
-- ss the session a sync lease is bound to (nil or '': none)
local function new_lease(id, c, w, ttl, k, now, j, g, ss)
  local f = redis.call('INCR', K_FENCE)
  if not id then id = LID_RAND .. string.format('%016x', f) .. ID_SUFFIX end
  local l = {id = id, c = c, w = w, f = f, ttl = ttl, a = now, e = now + ttl, k = k, j = j, g = g}
  if ss and ss ~= '' then
    l.s = ss
    redis.call('ZADD', K_SBIND, 0, ss .. '\0L' .. id)
  end
  local raw = cjson.encode(l)
  hset(K_LEASES, id, raw)
  redis.call('ZADD', K_HOLDERS, l.e, id)
  due_add(l.e)
  add_used(c, w)
  if k ~= '' then hset(K_IDEM, k, id) end
  return raw, l
end

-- the job id of a job seq (defined with the jobs below)
local job_id

-- ends the binding of sync lease l to its session (l.s): it ended
local function unbind(l)
  redis.call('ZREM', K_SBIND, l.s .. '\0L' .. l.id)
  l.s = nil
end

local function job_member(seq, ss, sc)
  return ss .. '\0J' .. sc .. '\0' .. job_id(seq) .. ID_SUFFIX
end

-- binds inflight job seq (meta m) to session ss, counted on its
-- subscription to channel sc (the caller saves m)
-- keeps the loads of the registry read this call (ROOM) in line with a
-- binding of session ss on channel sc that began (d 1) or ended (d -1)
local function room_adjust(ss, sc, d)
  if not ROOM then return end
  for _, e in ipairs(ROOM) do
    if e.s == ss and e.c == sc then e.load = e.load + d end
  end
end

local function bind_job(seq, m, ss, sc)
  m.ss, m.sc = ss, sc
  redis.call('ZADD', K_SBIND, 0, job_member(seq, ss, sc))
  room_adjust(ss, sc, 1)
end

-- ends the binding of job seq (meta m) to a session, if any: its lease
-- ended, or it is delivered again (the caller saves m)
local function unbind_job(seq, m)
  if not m.ss then return end
  redis.call('ZREM', K_SBIND, job_member(seq, m.ss, m.sc or ''))
  room_adjust(m.ss, m.sc or '', -1)
  m.ss, m.sc, m.sn = nil, nil, nil
end

-- ends a lease (release or expiry); returns the decoded lease or nil. raw:
-- its JSON when the caller has just read it
local function drop_lease(id, raw)
  redis.call('ZREM', K_HOLDERS, id)
  raw = raw or hget(K_LEASES, id)
  if not raw then return nil end
  local l = cjson.decode(raw)
  hdel(K_LEASES, id)
  add_used(l.c, -l.w)
  if l.k ~= '' and hget(K_IDEM, l.k) == id then hdel(K_IDEM, l.k) end
  if l.g and hdel1(K_GRANTED, id) == 1 then redis.call('ZREM', K_WDL, id) end
  if l.s then unbind(l) end
  return l
end

-- takes a waiter out of the queues; keep_deadline leaves its wdeadline
-- entry (a granted, not yet claimed waiter)
local function unqueue(w, keep_deadline)
  TOUCHED[w.c] = true
  redis.call('ZREM', K_WAITERS, w.id)
  redis.call('ZREM', K_CQ, cq_member(w))
  hdel(K_WDATA, w.id)
  if not keep_deadline then redis.call('ZREM', K_WDL, w.id) end
  local f = 'c:' .. w.c
  if hincrby(K_WCOUNT, f, -1) <= 0 then hdel(K_WCOUNT, f) end
  WN = set_counter('wn', -1)
end

-- first live waiter of channel c's capacity domain (c is ignored for scope
-- total); expired waiters found at the head are dropped on the way
local function head(conf, c, now)
  if WN <= 0 then return nil end
  while true do
    local id, m
    if conf.scope == SCOPE_CHANNEL then
      local p = chan_prefix(c)
      m = redis.call('ZRANGE', K_CQ, '[' .. p, '[' .. p .. '\255', 'BYLEX', 'LIMIT', 0, 1)[1]
      if not m then return nil end
      id = string.sub(m, #p + 17)
    else
      id = redis.call('ZRANGE', K_WAITERS, 0, 0)[1]
      if not id then return nil end
    end
    local raw = hget(K_WDATA, id)
    if not raw then
      -- cannot happen (the structures change together); heal anyway
      redis.call('ZREM', K_WAITERS, id)
      if m then redis.call('ZREM', K_CQ, m) end
    else
      local w = cjson.decode(raw)
      if w.d > now then return w end
      unqueue(w, false)
    end
  end
end

-- grants head waiters of channel c's domain while they fit. A waiter of
-- another Store is pushed its grant (PUBLISH) and must claim it (granted,
-- kept until its deadline: a grant to a dead node's waiter comes back). A
-- waiter of the calling Store, alive since it runs this call, gets its
-- lease in the reply (LOCAL_GRANTS) with no claim.
-- the mark in granted of a waiter that can never be granted
local TOO_LARGE = '!'

local function grant_domain(conf, c, now)
  local n = 0
  while true do
    local w = head(conf, c, now)
    if not w then return n end
    while w and (w.w > conf.max or (RL > 0 and w.w > RL)) do
      -- can never be granted (maxValue or the rate limit lowered below its
      -- weight): it leaves the queue, and its claim answers
      -- SD_WEIGHT_TOO_LARGE (op_claim) until its deadline
      unqueue(w, true)
      hset(K_GRANTED, w.id, TOO_LARGE)
      redis.call('PUBLISH', NODE_PREFIX .. w.n, w.id)
      w = head(conf, c, now)
    end
    if not w or not fits(conf, w.c, w.w) or not room(conf, w.c, w.w, now) then return n end
    rate_take(conf, w.c, w.w, now)
    if w.n == CALLER then
      unqueue(w, false)
      LOCAL_GRANTS[#LOCAL_GRANTS + 1] = {w.id, (new_lease(w.id, w.c, w.w, w.ttl, w.k, now, nil, nil, w.ss))}
    else
      unqueue(w, true)
      new_lease(w.id, w.c, w.w, w.ttl, w.k, now, nil, 1, w.ss)
      hset(K_GRANTED, w.id, w.n)
      redis.call('PUBLISH', NODE_PREFIX .. w.n, w.id)
    end
    n = n + 1
  end
end

-- grants head waiters of every domain
local function grant_all(conf, now)
  if conf.scope ~= SCOPE_CHANNEL then return grant_domain(conf, '', now) end
  local n = 0
  for _, f in ipairs(hall('HKEYS', K_WCOUNT)) do
    n = n + grant_domain(conf, string.sub(f, 3), now)
  end
  return n
end
