-- sess_put.lua: create or replace a session, connected (PutSession).
--
-- KEYS: sesslib.lua. ARGV[1] member, ARGV[2] the record JSON (lost and
-- ends are set here; created 0 = now).
--
-- The semaphores of the old record stay listed (what the session holds
-- there stays bound to it).
local m = ARGV[1]
local r = cjson.decode(ARGV[2])
local old = load(m)
r.lost, r.ends = 0, 0
if not r.created or r.created == 0 then r.created = NOW end
if type(r.subs) ~= 'table' then r.subs = {} end
if type(r.sems) ~= 'table' then r.sems = {} end
for _, s in ipairs(r.subs) do use(r, s.s) end
if old then
  for _, s in ipairs(old.sems) do use(r, s) end
end
return save(m, r, old)
