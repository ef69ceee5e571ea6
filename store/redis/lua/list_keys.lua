-- list_keys.lua: the key records of one tenant. (A plain script, outside the
-- lib_*.lua library.)
--
-- KEYS[1] key records: hash, secret hash -> key JSON
-- KEYS[2] the tenant's key index: hash, key id -> secret hash
--
-- Returns the key JSONs (in no particular order).
local hs = redis.call('HVALS', KEYS[2])
if #hs == 0 then return {} end
local out = {}
for _, v in ipairs(redis.call('HMGET', KEYS[1], unpack(hs))) do
  if v then out[#out + 1] = v end
end
return out
