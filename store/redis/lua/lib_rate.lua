-- lib_rate.lua: the rate limit's sliding windows (part of the function
-- library, see lib_state.lua). A semaphore with rl > 0 grants at most rl
-- weight units in any window of rp ms per capacity domain (the whole
-- semaphore with scope total, each channel with scope channel).
--
-- The window is exact: a log of grants, one member of K_RLOG (a zset, all
-- scores 0, ordered by name) per grant,
--   dp .. hex13(t) .. hex16(cum)
-- where dp is the domain's prefix ('T' for total, 'C' .. chan_prefix for
-- a channel), t the grant's time (ms) and cum the domain's running total of
-- units granted after this grant (K_RUSED 'n' .. dp). K_RUSED 'l' .. dp is
-- the running total of the newest grant that has left the window, so the
-- window holds n - l units without reading its members, and a trim removes
-- the members that left with one ZREMRANGEBYLEX, their weights known from
-- the newest one's cum. Cost: one member (about 60 bytes of zset entry) per
-- grant in the window, at most rl per domain; a grant of weight w adds one.
--
-- A domain that has a permit for its head but no room records when it will
-- (RATE_AT, the earliest over the call); done() returns the delay, and the
-- calling Store sets a timer to call dispatch.lua then. The instant is kept
-- in the semaphore's hash (rn) and in the sweep index (due_add), so that
-- any call after it (the sweep at the latest) grants what it waited for:
-- expire() calls rate_due().

-- RL, RP, RN and RATE_AT are declared in lib_state.lua (load_conf sets them).

local function rate_prefix(conf, c)
  if conf.scope == SCOPE_CHANNEL then return 'C' .. string.format('%04d', #c) .. c end
  return 'T'
end

local function rate_cum(m)
  return tonumber(string.sub(m, -16), 16)
end

-- drops the grants of domain dp that left the window at now; returns the
-- units in the window
local function rate_trim(dp, now)
  local cutoff = dp .. string.format('%013x', now - RP) .. '\255'
  local last = redis.call('ZRANGE', K_RLOG, '[' .. cutoff, '[' .. dp, 'BYLEX', 'REV', 'LIMIT', 0, 1)[1]
  local n = tonumber(hget(K_RUSED, 'n' .. dp) or 0)
  if last then
    redis.call('ZREMRANGEBYLEX', K_RLOG, '[' .. dp, '[' .. cutoff)
    local l = rate_cum(last)
    if l >= n then
      hdel(K_RUSED, 'n' .. dp, 'l' .. dp) -- the window is empty
      return 0
    end
    hset(K_RUSED, 'l' .. dp, l)
    return n - l
  end
  return n - tonumber(hget(K_RUSED, 'l' .. dp) or 0)
end

-- the instant (ms) at which w more units fit in domain dp holding used
-- units: when the grant that brings the units that leave to enough leaves
local function rate_next(dp, used, w)
  local need = used + w - RL -- units that must leave first
  local base = tonumber(hget(K_RUSED, 'l' .. dp) or 0)
  local from = '[' .. dp
  while true do
    local ms = redis.call('ZRANGE', K_RLOG, from, '[' .. dp .. '\255', 'BYLEX', 'LIMIT', 0, 64)
    if #ms == 0 then return nil end
    for _, m in ipairs(ms) do
      if rate_cum(m) - base >= need then
        return tonumber(string.sub(m, #dp + 1, #dp + 13), 16) + RP
      end
    end
    from = '(' .. ms[#ms]
  end
end

-- is there room for w more units in channel c's domain? If not, also
-- returns when there will be, and notes it (RATE_AT)
local function room(conf, c, w, now)
  if RL <= 0 then return true end
  local dp = rate_prefix(conf, c)
  local used = rate_trim(dp, now)
  if used + w <= RL then return true end
  local at = rate_next(dp, used, w)
  if at and at < RATE_AT then RATE_AT = at end
  return false, at
end

-- records a grant of w units in channel c's domain at now
local function rate_take(conf, c, w, now)
  if RL <= 0 then return end
  local dp = rate_prefix(conf, c)
  local cum = hincrby(K_RUSED, 'n' .. dp, w)
  redis.call('ZADD', K_RLOG, 0, dp .. string.format('%013x', now) .. string.format('%016x', cum))
end

-- the units in channel c's window and when its oldest grant leaves (0:
-- empty), for the state
local function rate_state(conf, c, now)
  if RL <= 0 then return 0, 0 end
  local dp = rate_prefix(conf, c)
  local used = rate_trim(dp, now)
  if used <= 0 then return 0, 0 end
  local m = redis.call('ZRANGE', K_RLOG, '[' .. dp, '[' .. dp .. '\255', 'BYLEX', 'LIMIT', 0, 1)[1]
  if not m then return used, 0 end
  return used, tonumber(string.sub(m, #dp + 1, #dp + 13), 16) + RP
end

-- drops the whole window (rate removed, scope changed, semaphore deleted)
local function rate_clear()
  hdrop('DEL', K_RLOG, K_RUSED)
end
