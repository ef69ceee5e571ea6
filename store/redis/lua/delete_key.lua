-- delete_key.lua: revoke an API key. (A plain script, outside the
-- lib_*.lua library.)
--
-- KEYS[1] key records: hash, secret hash -> key JSON
-- KEYS[2] the tenant's key index: hash, key id -> secret hash
-- ARGV[1] key id
--
-- Returns the revoked key's secret hash (the caller publishes it so every
-- instance evicts it from its key cache), or '' for an unknown id.
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then return '' end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], h)
return h
