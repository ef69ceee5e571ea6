-- lib_cache.lua: a write-back cache of the semaphore's hashes for one call
-- (the first part of the function library, see lib_state.lua).
--
-- Every hash command of the library goes through these helpers. A read
-- asks Redis once per field and call; a write only changes the cache; the
-- wrapper of every registered function (scripts.go) calls hflush() after
-- its body, which sends each hash's writes as one HSET and one HDEL. A
-- call that touches a job record, a queue chunk and a counter five times
-- thus sends each once. Redis runs one function at a time, so no one sees
-- the hashes between a write and its flush; a call that fails with a Lua
-- error writes nothing. Commands that read a whole hash (hall) flush it
-- first; a key deleted (hdrop) forgets its cached fields.

local HC -- HC[key] = {v = {field -> value or false (absent)}, d = {field -> true (dirty)}}
-- A cached value is a string, or a number when a write gave one (hset,
-- hincrby): a counter moved many times in a call is formatted once, at
-- its flush, and never parsed again; readers (hget, hmget) get the string
-- Redis would store.

local function cache_reset() HC = {} end

local function hc(k)
  local c = HC[k]
  if not c then
    c = {v = {}, d = {}, n = 0}
    HC[k] = c
  end
  return c
end

-- a hash with this many cached writes is sent at once and its cache
-- emptied, so that a call over many fields (a purge of a million jobs)
-- holds a bounded part of them in Lua memory
local HMAX = 4096
local hflush_key

-- records a write of field f (value v: a string, or false for a delete)
local function hwrite(k, c, f, v)
  if not c.d[f] then c.n = c.n + 1 end
  c.v[f], c.d[f] = v, true
  if c.n >= HMAX then
    hflush_key(k, c)
    c.v = {}
  end
end

-- the string Redis would store for v (it formats a Lua number with %.17g;
-- %d, quicker, gives the same for an integer below 2^53)
local function hstr(v)
  if type(v) == 'number' then
    if v % 1 == 0 and v > -9007199254740992 and v < 9007199254740992 then return string.format('%d', v) end
    return string.format('%.17g', v)
  end
  return v
end

-- the value of field f of hash k, or false (as redis.call('HGET') gives)
local function hget(k, f)
  f = hstr(f)
  local c = hc(k)
  local v = c.v[f]
  if v == nil then
    v = redis.call('HGET', k, f)
    c.v[f] = v
  elseif type(v) == 'number' then
    return hstr(v)
  end
  return v
end

-- the values of fields ..., as HMGET gives them; one HMGET for the fields
-- not cached yet
local function hmget(k, ...)
  local c, fs, miss = hc(k), {...}, {}
  for i, f in ipairs(fs) do
    fs[i] = hstr(f)
    if c.v[fs[i]] == nil then miss[#miss + 1] = fs[i] end
  end
  for i = 1, #miss, 1000 do
    local j = math.min(i + 999, #miss)
    local got = redis.call('HMGET', k, unpack(miss, i, j))
    for x = i, j do c.v[miss[x]] = got[x - i + 1] end
  end
  local out = {}
  for i, f in ipairs(fs) do out[i] = hstr(c.v[f]) end
  return out
end

-- HSET k f v [f2 v2 ...] (a number v is kept as is, see HC)
local function hset(k, f, v, ...)
  local c = hc(k)
  hwrite(k, c, hstr(f), v)
  if select('#', ...) > 0 then
    local a = {...}
    for i = 1, #a, 2 do hwrite(k, c, hstr(a[i]), a[i + 1]) end
  end
end

local function hexists(k, f) return hget(k, f) and 1 or 0 end

-- HDEL k f1 f2 ...
local function hdel(k, ...)
  local c = hc(k)
  for _, f in ipairs({...}) do hwrite(k, c, hstr(f), false) end
end

-- HDEL k f; returns 1 when f existed, else 0
local function hdel1(k, f)
  local n = hexists(k, f)
  hdel(k, f)
  return n
end

local function hincrby(k, f, d)
  f = hstr(f)
  local c = hc(k)
  local v = c.v[f]
  if v == nil then v = redis.call('HGET', k, f) end
  if type(v) ~= 'number' then v = tonumber(v or 0) end
  v = v + d
  hwrite(k, c, f, v)
  return v
end


local function hsetnx(k, f, v)
  if hget(k, f) then return 0 end
  hset(k, f, v)
  return 1
end

-- fields per HSET, HDEL or HMGET (unpack's stack is bounded)
local HCHUNK = 1000

-- cmd k with the arguments in list a, at most n per command
local function send(cmd, k, a, n)
  for i = 1, #a, n do
    redis.call(cmd, k, unpack(a, i, math.min(i + n - 1, #a)))
  end
end

-- sends the writes cached for hash k
function hflush_key(k, c)
  local set, del = {}, {}
  for f in pairs(c.d) do
    local v = c.v[f]
    if v then
      set[#set + 1] = f
      set[#set + 1] = hstr(v)
    else
      del[#del + 1] = f
    end
  end
  send('HSET', k, set, 2 * HCHUNK)
  send('HDEL', k, del, HCHUNK)
  c.d, c.n = {}, 0
end

-- sends every cached write (the function wrapper calls it last)
local function hflush()
  for k, c in pairs(HC) do
    if next(c.d) then hflush_key(k, c) end
  end
end

-- a command reading all of hash k (HGETALL, HKEYS, HVALS, HLEN), after
-- its cached writes are sent
local function hall(cmd, k)
  local c = HC[k]
  if c and next(c.d) then hflush_key(k, c) end
  return redis.call(cmd, k)
end

-- DEL or UNLINK of keys ...; their cached fields are forgotten
local function hdrop(cmd, ...)
  for _, k in ipairs({...}) do HC[k] = nil end
  return redis.call(cmd, ...)
end
