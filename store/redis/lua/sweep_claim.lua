-- sweep_claim.lua: claim semaphores that are due for a sweep, so that
-- concurrent sweepers do not work the same ones. (A plain script,
-- outside the function library (lib_*.lua): it touches only the global sweep index.)
--
-- KEYS[1] sweep index: zset, member "<tenant>/<name>", score = time (ms,
--         Redis TIME) the semaphore must next be checked
-- ARGV[1] max members to claim
-- ARGV[2] recheck ms: a claimed member's score becomes now + recheck
--
-- Returns the claimed members.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
local later = now + tonumber(ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', later, m) end
return due
