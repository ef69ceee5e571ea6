-- sesslib.lua: helpers shared by the session scripts (sess_*.lua).
--
-- Go (sessions.go) prepends this file to each sess_*.lua script. Every
-- session script touches only the keys of the session index, which share
-- the hash tag {nodes}, so that each session operation is one atomic
-- script, also on Redis Cluster:
--
--   KEYS[1]  nodes   zset: node id -> heartbeat expiry (ms, Redis TIME)
--   KEYS[2]  sess    hash: "<tenant>/<id>" -> session record JSON
--            {t, id, node, tok, kid, lost, ends, grace, sems, subs, created}
--            node "" while lost; lost/ends: ms of Redis TIME (0 while
--            connected); grace ms; kid: the API key id that opened it;
--            sems: the semaphores it may hold leases or jobs in (what it
--            holds is bound in each semaphore's own slot, lib_*.lua sbind);
--            subs: [{s, c, p}]
--   KEYS[3]  bynode  zset (scores 0): "<node>\0<tenant>/<id>", the
--            connected sessions of each node
--   KEYS[4]  lost    zset: "<tenant>/<id>" -> end of grace (ms), lost sessions
--   KEYS[5]  tokens  hash: "<tenant>\0<resume token hash>" -> session id
--
-- The record is the truth of a session; bynode, lost and tokens index it
-- and change with it in the same script. A semaphore's subscriber
-- registry (its slot, sessions.go) is only a hint of which sessions to
-- look up: Subscribers checks every entry against the record.
--
-- Replies: {'OK', record JSON} (the record after the operation, or as it
-- was before a deletion), or {'SD_SESSION_NOT_FOUND'}.
local _t = redis.call('TIME')
local NOW = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
local NOT_FOUND = {E_SESSION_NOT_FOUND}
local K_NODES, K_SESS, K_BYNODE, K_LOST, K_TOKENS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- load returns the record of member m (decoded) and its JSON, or nil.
local function load(m)
  local raw = redis.call('HGET', K_SESS, m)
  if not raw then return nil, nil end
  local r = cjson.decode(raw)
  if type(r.sems) ~= 'table' then r.sems = {} end
  if type(r.subs) ~= 'table' then r.subs = {} end
  return r, raw
end

-- gone reports a session lost past its grace.
local function gone(r)
  return r.lost > 0 and r.ends <= NOW
end

-- live returns the record unless it is unknown or gone.
local function live(m)
  local r, raw = load(m)
  if not r or gone(r) then return nil, nil end
  return r, raw
end

local function index_of(list, v)
  for i, x in ipairs(list) do
    if x == v then return i end
  end
  return nil
end

-- use adds sem to the record's semaphores; true when it was not there
local function use(r, sem)
  if index_of(r.sems, sem) then return false end
  table.insert(r.sems, sem)
  return true
end

local function sub_index(r, sem, ch)
  for i, s in ipairs(r.subs) do
    if s.s == sem and s.c == ch then return i end
  end
  return nil
end

-- unindex removes what the indexes hold of record old (member m).
local function unindex(m, old)
  if not old then return end
  if old.node ~= '' then redis.call('ZREM', K_BYNODE, old.node .. '\0' .. m) end
  redis.call('ZREM', K_LOST, m)
  if old.tok ~= '' then
    local f = old.t .. '\0' .. old.tok
    if redis.call('HGET', K_TOKENS, f) == old.id then redis.call('HDEL', K_TOKENS, f) end
  end
end

-- save stores record r of member m (old: the record it replaces, or nil),
-- keeps the indexes in line and replies with it.
local function save(m, r, old)
  unindex(m, old)
  if r.node ~= '' then redis.call('ZADD', K_BYNODE, 0, r.node .. '\0' .. m) end
  if r.lost > 0 then redis.call('ZADD', K_LOST, r.ends, m) end
  if r.tok ~= '' then redis.call('HSET', K_TOKENS, r.t .. '\0' .. r.tok, r.id) end
  local raw = cjson.encode(r)
  redis.call('HSET', K_SESS, m, raw)
  return {'OK', raw}
end

-- drop deletes the record of member m and replies with it as it was.
local function drop(m, r, raw)
  unindex(m, r)
  redis.call('HDEL', K_SESS, m)
  return {'OK', raw}
end

-- node_expiry is the heartbeat expiry of a node (nil: unknown).
local function node_expiry(node)
  local e = redis.call('ZSCORE', K_NODES, node)
  return e and tonumber(e)
end
