-- nodes.lua: the nodes whose heartbeat has not expired (Nodes). (Standalone.)
--
-- KEYS[1] nodes: zset, node id -> heartbeat expiry (ms, Redis TIME)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')
