-- sess_bind_job.lua: record a job pushed to the session (BindJob). It
-- counts on the subscription to (semaphore, channel), else on the one to
-- (semaphore, ""), else on none.
--
-- KEYS[1] the session record
-- ARGV[1] semaphore, ARGV[2] channel, ARGV[3] job id
local r, raw = live()
if not r then return NOT_FOUND end
local sem, ch, job = ARGV[1], ARGV[2], ARGV[3]
if not index_of(r.jobs, job) then table.insert(r.jobs, job) end
r.jsub[job] = nil
if sub_index(r, sem, ch) then
  r.jsub[job] = {sem, ch}
elseif sub_index(r, sem, '') then
  r.jsub[job] = {sem, ''}
end
return save(r, raw, false)
