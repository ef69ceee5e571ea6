-- heartbeat.lua: a node is alive until now + ttl (Heartbeat). (A plain
-- script, outside the function library (lib_*.lua).)
--
-- KEYS[1] nodes: zset, node id -> heartbeat expiry (ms, Redis TIME)
-- ARGV[1] node id, ARGV[2] ttl ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
