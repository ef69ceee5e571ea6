-- sess_unbind_job.lua: forget a job of the session (UnbindJob).
--
-- KEYS[1] the session record
-- ARGV[1] job id
local r, raw = live()
if not r then return NOT_FOUND end
local i = index_of(r.jobs, ARGV[1])
if not i and not r.jsub[ARGV[1]] then return unchanged(raw) end
if i then table.remove(r.jobs, i) end
r.jsub[ARGV[1]] = nil
return save(r, raw, false)
