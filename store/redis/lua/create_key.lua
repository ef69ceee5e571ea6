-- create_key.lua: store an API key record. (A plain script, outside the
-- lib_*.lua library.)
--
-- KEYS[1] key records: hash, secret hash -> key JSON
-- KEYS[2] the tenant's key index: hash, key id -> secret hash
-- ARGV[1] key id, ARGV[2] secret hash, ARGV[3] key JSON
--
-- Returns 1, or 0 when the id or the hash is already taken (nothing changes).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
