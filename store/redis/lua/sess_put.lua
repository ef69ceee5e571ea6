-- sess_put.lua: create or replace a session, connected (PutSession).
--
-- KEYS[1] the session record
-- ARGV[1] the new record JSON (rev, cid, lost, ends, jsub are set here;
--         created 0 = now)
--
-- Jobs the old record counted on a subscription keep it when listed again.
local r = cjson.decode(ARGV[1])
local old, raw = load()
r.rev = old and old.rev or 0
r.lost, r.ends = 0, 0
if not r.created or r.created == 0 then r.created = NOW end
r.jsub = {}
if type(r.leases) ~= 'table' then r.leases = {} end
if type(r.subs) ~= 'table' then r.subs = {} end
if type(r.jobs) ~= 'table' then r.jobs = {} end
if old then
  for _, j in ipairs(r.jobs) do
    if old.jsub[j] then r.jsub[j] = old.jsub[j] end
  end
end
return save(r, raw, true)
