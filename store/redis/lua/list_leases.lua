-- list_leases.lua: a page of the semaphore's live leases, oldest grant
-- first (by fencing token), after dropping expired ones (it is a function
-- of the function library (lib_*.lua)).
--
-- KEYS: the semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] channel ('' every channel), ARGV[6] cursor (the token of the
-- last lease of the previous page, 0 to start), ARGV[7] limit
--
-- Returns {'ok', {lease JSON, ...}, next cursor ('' last page), due,
-- events, grants}, or SD_SEMAPHORE_NOT_FOUND. Costs one pass over the
-- semaphore's leases (at most maxValue per capacity domain).
local conf = load_conf()
if not conf then return fail(E_SEMAPHORE_NOT_FOUND) end
local now = now_ms()
expire(conf, now)
local c, after, limit = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local sel = {}
for _, raw in ipairs(hall('HVALS', K_LEASES)) do
  local l = cjson.decode(raw)
  if l.f > after and (c == '' or l.c == c) then sel[#sel + 1] = {l.f, raw} end
end
table.sort(sel, function(x, y) return x[1] < y[1] end)
local out, nxt = {}, ''
for i = 1, math.min(limit, #sel) do out[i] = sel[i][2] end
if #sel > limit then nxt = string.format('%.0f', sel[limit][1]) end
return done(conf, now, {'ok', out, nxt}, true)
