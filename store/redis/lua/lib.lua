-- lib.lua: helpers shared by every per-semaphore script.
--
-- Go (scripts.go) prepends this file to each per-semaphore script at init,
-- so every script is still one self-contained EVAL. It defines only local
-- names. All per-semaphore scripts receive the same KEYS, all in the
-- semaphore's hash slot (built in keys.go, semKeys):
--
--   KEYS[1]  sem        hash: config and bookkeeping (max, scope, lt, ...)
--   KEYS[2]  holders    zset: lease id -> expiry (ms, Redis TIME)
--   KEYS[3]  leases     hash: lease id -> lease JSON {id,c,w,f,ttl,a,e,k}
--   KEYS[4]  used       hash: "t" -> used weight, "c:<channel>" -> used weight of the channel
--   KEYS[5]  fence      string: fencing counter (INCR; never deleted)
--   KEYS[6]  waiters    zset: waiter id -> arrival seq (FIFO of the whole semaphore)
--   KEYS[7]  cq         zset, all scores 0: per-channel FIFO, member = chanprefix(c) .. seq16 .. id
--   KEYS[8]  wdata      hash: waiter id -> waiter JSON {id,c,w,ttl,k,n,d,s}
--   KEYS[9]  wdeadline  zset: waiter id -> deadline (ms), waiting and granted-unclaimed waiters
--   KEYS[10] wcount     hash: "c:<channel>" -> number of waiting waiters
--   KEYS[11] granted    hash: waiter id -> node id, while its granted lease is not yet claimed
--   KEYS[12] idem       hash: idempotency key -> lease id
--
-- and ARGV[1] = prefix of the node pub/sub channels ("sd:node:"): a grant to
-- a waiter is pushed by PUBLISH ARGV[1]..<node id> <waiter id>.
--
-- A waiter's id is the id of the lease it will get. Times are ms of Redis
-- TIME; a lease is live while now < expiry, a waiter while now < deadline.

local K_SEM, K_HOLDERS, K_LEASES, K_USED, K_FENCE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_WAITERS, K_CQ, K_WDATA, K_WDL, K_WCOUNT = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local K_GRANTED, K_IDEM = KEYS[11], KEYS[12]
local NODE_PREFIX = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- config of the semaphore, or nil when it does not exist
local function load_conf()
  local v = redis.call('HMGET', K_SEM, 'max', 'scope', 'lt')
  if not v[1] then return nil end
  return {max = tonumber(v[1]), scope = v[2], lt = tonumber(v[3])}
end

local function used(field)
  return tonumber(redis.call('HGET', K_USED, field) or 0)
end

local function add_used(c, delta)
  if redis.call('HINCRBY', K_USED, 't', delta) <= 0 then redis.call('HDEL', K_USED, 't') end
  local f = 'c:' .. c
  if redis.call('HINCRBY', K_USED, f, delta) <= 0 then redis.call('HDEL', K_USED, f) end
end

-- does weight w fit in channel c's capacity domain?
local function fits(conf, c, w)
  if conf.scope == 'channel' then return used('c:' .. c) + w <= conf.max end
  return used('t') + w <= conf.max
end

local function chan_prefix(c)
  return string.format('%04d', #c) .. c
end

local function cq_member(w)
  return chan_prefix(w.c) .. string.format('%016d', w.s) .. w.id
end

-- creates a live lease and returns its JSON
local function new_lease(id, c, w, ttl, k, now)
  local l = {id = id, c = c, w = w, f = redis.call('INCR', K_FENCE), ttl = ttl, a = now, e = now + ttl, k = k}
  local raw = cjson.encode(l)
  redis.call('HSET', K_LEASES, id, raw)
  redis.call('ZADD', K_HOLDERS, l.e, id)
  add_used(c, w)
  if k ~= '' then redis.call('HSET', K_IDEM, k, id) end
  return raw
end

-- ends a lease (release or expiry); returns the decoded lease or nil
local function drop_lease(id)
  redis.call('ZREM', K_HOLDERS, id)
  local raw = redis.call('HGET', K_LEASES, id)
  if not raw then return nil end
  local l = cjson.decode(raw)
  redis.call('HDEL', K_LEASES, id)
  add_used(l.c, -l.w)
  if l.k ~= '' and redis.call('HGET', K_IDEM, l.k) == id then redis.call('HDEL', K_IDEM, l.k) end
  if redis.call('HDEL', K_GRANTED, id) == 1 then redis.call('ZREM', K_WDL, id) end
  return l
end

-- takes a waiter out of the queues; keep_deadline leaves its wdeadline
-- entry (a granted, not yet claimed waiter)
local function unqueue(w, keep_deadline)
  redis.call('ZREM', K_WAITERS, w.id)
  redis.call('ZREM', K_CQ, cq_member(w))
  redis.call('HDEL', K_WDATA, w.id)
  if not keep_deadline then redis.call('ZREM', K_WDL, w.id) end
  local f = 'c:' .. w.c
  if redis.call('HINCRBY', K_WCOUNT, f, -1) <= 0 then redis.call('HDEL', K_WCOUNT, f) end
end

-- first live waiter of channel c's capacity domain (c is ignored for scope
-- total); expired waiters found at the head are dropped on the way
local function head(conf, c, now)
  while true do
    local id, m
    if conf.scope == 'channel' then
      local p = chan_prefix(c)
      m = redis.call('ZRANGE', K_CQ, '[' .. p, '[' .. p .. '\255', 'BYLEX', 'LIMIT', 0, 1)[1]
      if not m then return nil end
      id = string.sub(m, #p + 17)
    else
      id = redis.call('ZRANGE', K_WAITERS, 0, 0)[1]
      if not id then return nil end
    end
    local raw = redis.call('HGET', K_WDATA, id)
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

-- grants head waiters of channel c's domain while they fit; pushes each grant
local function grant_domain(conf, c, now)
  local n = 0
  while true do
    local w = head(conf, c, now)
    if not w or not fits(conf, w.c, w.w) then return n end
    unqueue(w, true)
    new_lease(w.id, w.c, w.w, w.ttl, w.k, now)
    redis.call('HSET', K_GRANTED, w.id, w.n)
    redis.call('PUBLISH', NODE_PREFIX .. w.n, w.id)
    n = n + 1
  end
end

-- grants head waiters of every domain
local function grant_all(conf, now)
  if conf.scope ~= 'channel' then return grant_domain(conf, '', now) end
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', K_WCOUNT)) do
    n = n + grant_domain(conf, string.sub(f, 3), now)
  end
  return n
end

-- drops expired leases and grants the permits they held; returns
-- (expired leases, grants)
local function expire(conf, now)
  local ids = redis.call('ZRANGE', K_HOLDERS, '-inf', now, 'BYSCORE')
  if #ids == 0 then return 0, 0 end
  local chans, any = {}, false
  for _, id in ipairs(ids) do
    local l = drop_lease(id)
    if l then chans[l.c] = true; any = true end
  end
  local n = 0
  if any then
    if conf.scope ~= 'channel' then
      n = grant_domain(conf, '', now)
    else
      for c in pairs(chans) do n = n + grant_domain(conf, c, now) end
    end
  end
  return #ids, n
end

-- earliest holder expiry or waiter deadline (ms), 0 when there is none:
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
  return d
end

-- a waiting call asks for its outcome: {'granted', lease JSON, due},
-- {'waiting', '', due}, {'cancelled', '', due} or {'gone', '', due}.
-- With cancel, a still-queued waiter leaves the queue (and the waiters
-- behind it may be granted); a granted lease is handed over either way.
local function claim_waiter(id, cancel)
  local conf = load_conf()
  if not conf then return redis.error_reply('SD_SEMAPHORE_NOT_FOUND') end
  local now = now_ms()
  local _, n = expire(conf, now)
  local status, lease = 'gone', ''
  if redis.call('HDEL', K_GRANTED, id) == 1 then
    redis.call('ZREM', K_WDL, id)
    lease = redis.call('HGET', K_LEASES, id)
    if lease then status = 'granted' else lease = '' end
  else
    local raw = redis.call('HGET', K_WDATA, id)
    if raw then
      if cancel then
        local w = cjson.decode(raw)
        unqueue(w, false)
        n = n + grant_domain(conf, w.c, now)
        status = 'cancelled'
      else
        status = 'waiting'
      end
    end
  end
  local due = 0
  if n > 0 then due = next_due() end
  return {status, lease, due}
end
