-- index_sync.lua: bring the global session index in line with a session
-- record (after a script changed the record in its own slot). Applied
-- only when newer (rev) than what the index holds, so syncs that race
-- converge to the latest record. (Standalone.)
--
-- KEYS[1] idx:    hash, member "<tenant>/<id>" -> entry JSON
--                 {r rev, i id, n node ("" lost), c cid, g grace ms,
--                  t token field, la lost at ms, e ends at ms (lost)}
-- KEYS[2] bynode: zset, scores 0, "<node>\0<member>": sessions per node
-- KEYS[3] lost:   zset, member -> ends at (ms)
-- KEYS[4] tokens: hash, "<tenant>\0<token hash>" -> session id
-- ARGV[1] member, ARGV[2] rev, ARGV[3] new entry JSON, or "" to delete
--
-- Returns 1 when applied, 0 when the index already holds a newer state.
local m, rev = ARGV[1], tonumber(ARGV[2])
local cur = redis.call('HGET', KEYS[1], m)
if cur then
  local e = cjson.decode(cur)
  if tonumber(e.r) >= rev then return 0 end
  if e.n ~= '' then redis.call('ZREM', KEYS[2], e.n .. '\0' .. m) end
  if e.t ~= '' and redis.call('HGET', KEYS[4], e.t) == e.i then redis.call('HDEL', KEYS[4], e.t) end
  redis.call('ZREM', KEYS[3], m)
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], m)
  return 1
end
local e = cjson.decode(ARGV[3])
if e.n ~= '' then redis.call('ZADD', KEYS[2], 0, e.n .. '\0' .. m) end
if e.t ~= '' then redis.call('HSET', KEYS[4], e.t, e.i) end
if e.e > 0 then redis.call('ZADD', KEYS[3], e.e, m) end
redis.call('HSET', KEYS[1], m, ARGV[3])
return 1
