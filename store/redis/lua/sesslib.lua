-- sesslib.lua: helpers shared by the session-record scripts (sess_*.lua).
--
-- Go (scripts.go) prepends this file to each sess_*.lua script. Every
-- session script touches one key, in the session's own hash slot:
--
--   KEYS[1]  the session record: string, JSON
--            {t, id, node, tok, kid, lost, ends, grace, sems, subs,
--             created, rev, cid}
--            node "" while lost; lost/ends: ms of Redis TIME (0 while
--            connected); grace ms; kid: the API key id that opened it;
--            sems: the semaphores it may hold leases or jobs in (what it
--            holds is bound in each semaphore's own slot, lib.lua
--            sbind); subs: [{s, c, p}];
--            rev: bumped by every change, max(rev+1, now ms), so it also
--            grows across a delete and re-create; cid: the rev at which
--            the session last connected (put or resume), naming one
--            connection of it.
--
-- The record is the source of truth of a session. The indexes derived
-- from it live in other slots (the global {nodes} index, the per-semaphore
-- subscriber registries); the Go side updates them after the script from
-- the old and new records it returns, guarded by rev (see sessions.go).
--
-- Replies: {'OK', old record JSON or false, new record JSON or false,
-- deletion rev (when the record was deleted)}, {'SKIP'} when a guarded
-- script does not apply, or {'SD_SESSION_NOT_FOUND'}.
local _t = redis.call('TIME')
local NOW = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
local NOT_FOUND = {'SD_SESSION_NOT_FOUND'}

-- load returns the record (decoded) and its JSON, or nil.
local function load()
  local raw = redis.call('GET', KEYS[1])
  if not raw then return nil, false end
  local r = cjson.decode(raw)
  if type(r.sems) ~= 'table' then r.sems = {} end
  if type(r.subs) ~= 'table' then r.subs = {} end
  r.jsub, r.leases, r.jobs = nil, nil, nil -- an earlier layout kept bindings here
  return r, raw
end

-- gone reports a session lost past its grace.
local function gone(r)
  return r.lost > 0 and r.ends <= NOW
end

-- live returns the record unless it is unknown or gone.
local function live()
  local r, raw = load()
  if not r or gone(r) then return nil, false end
  return r, raw
end

local function next_rev(r)
  return math.max((r and r.rev or 0) + 1, NOW)
end

-- save bumps rev (and cid when connect), stores the record and replies.
local function save(r, raw, connect)
  r.rev = next_rev(r)
  if connect then r.cid = r.rev end
  local new = cjson.encode(r)
  redis.call('SET', KEYS[1], new)
  return {'OK', raw, new}
end

-- unchanged replies for a no-op.
local function unchanged(raw)
  return {'OK', raw, raw}
end

-- drop deletes the record and replies with the deletion rev.
local function drop(r, raw)
  redis.call('DEL', KEYS[1])
  return {'OK', raw, false, next_rev(r)}
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
