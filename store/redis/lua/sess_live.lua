-- sess_live.lua: which of the given sessions are connected on a node
-- whose heartbeat is live, or lost within their grace (Subscribers).
--
-- KEYS: sesslib.lua. ARGV: members. Returns, per member in order, its
-- record JSON when it is connected on a live node or lost within its
-- grace, '-' when it has no record (ended or expired), else ''.
local out = {}
for i, m in ipairs(ARGV) do
  local r, raw = load(m)
  out[i] = ''
  if not r then
    out[i] = '-'
  elseif r.lost ~= 0 then
    if r.ends > NOW then out[i] = raw end
  elseif r.node ~= '' then
    local exp = node_expiry(r.node)
    if exp and exp > NOW then out[i] = raw end
  end
end
return out
