-- registry_sync.lua: bring a semaphore's subscriber registry in line with
-- a session record (after a script changed the record in its own slot).
-- Each field is written only when newer (rev) than what it holds; a
-- removed entry leaves a tombstone {r, d} so that an older write arriving
-- late cannot bring it back (subscribers.lua prunes old tombstones).
-- (Standalone.)
--
-- KEYS[1] subs: hash, "<session>\0<channel>" -> entry JSON
--         {r rev, s session, c channel, n node, p prefetch, i inflight}
-- ARGV[1] rev, then pairs: ARGV[2k] field, ARGV[2k+1] entry JSON or ""
--         (remove)
--
-- Returns the number of fields written.
local rev = tonumber(ARGV[1])
local n = 0
for k = 2, #ARGV, 2 do
  local f, v = ARGV[k], ARGV[k + 1]
  local cur = redis.call('HGET', KEYS[1], f)
  if not cur or tonumber(cjson.decode(cur).r) < rev then
    if v == '' then v = cjson.encode({r = rev, d = 1}) end
    redis.call('HSET', KEYS[1], f, v)
    n = n + 1
  end
end
return n
