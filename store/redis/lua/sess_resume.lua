-- sess_resume.lua: move a lost (or connected) session to a node
-- (ResumeSession), as a new connection (cid).
--
-- KEYS[1] the session record
-- ARGV[1] resume token hash, ARGV[2] new node
-- ARGV[3] a dead node and ARGV[4] the ms at which its sessions end (its
--         heartbeat expiry + the session's grace), found in the global
--         index: a session still connected on that node is gone from then
--         on. "" and 0 when the node is not known dead.
local r, raw = live()
if not r or r.tok ~= ARGV[1] then return NOT_FOUND end
if r.lost == 0 and ARGV[3] ~= '' and r.node == ARGV[3] and NOW >= tonumber(ARGV[4]) then
  return NOT_FOUND
end
r.node, r.lost, r.ends = ARGV[2], 0, 0
return save(r, raw, true)
