-- sess_put.lua: create or replace a session, connected (PutSession).
--
-- KEYS[1] the session record
-- ARGV[1] the new record JSON (rev, cid, lost, ends are set here; created
--         0 = now)
--
-- The semaphores of the old record stay listed (what the session holds
-- there stays bound to it).
local r = cjson.decode(ARGV[1])
local old, raw = load()
r.rev = old and old.rev or 0
r.lost, r.ends = 0, 0
if not r.created or r.created == 0 then r.created = NOW end
if type(r.subs) ~= 'table' then r.subs = {} end
if type(r.sems) ~= 'table' then r.sems = {} end
for _, s in ipairs(r.subs) do use(r, s.s) end
if old then
  for _, s in ipairs(old.sems) do use(r, s) end
end
return save(r, raw, true)
